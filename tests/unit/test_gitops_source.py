"""GitOps sources with real git: a bare repository and a clone that commits and force-pushes.

What must hold: the revision read is the ref's commit; a force-pushed branch is followed; a fetch
that fails (unreachable remote, missing ref) is an error that changes nothing; no hook ever runs;
no symlink leads out of the tree; a materialized tree holds exactly the revision's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gitrepo import Repo, git

from launcher.errors import UsageError
from launcher.gitops.materialize import INDEX, materialize
from launcher.gitops.source import SourceError, parse_source, snapshot

VM = 'name = "{name}"\n[boot]\nkernel = "/k"\ninitrd = "/i"\n'


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path)
    r.write("a.toml", VM.format(name="a"))
    r.write("web/b.yaml", "name: b\nboot: {kernel: /k, initrd: /i}\n")
    r.write(".hidden/c.toml", VM.format(name="c"))
    r.write("README.md", "not a manifest\n")
    r.commit("one")
    return r


def test_parse_source_forms(tmp_path: Path, repo: Repo) -> None:
    folder = parse_source(str(tmp_path / "work"))
    assert (folder.kind, folder.ref) == ("folder", "")
    bare = parse_source(str(repo.bare))  # a bare repository: git, its HEAD
    assert (bare.kind, bare.ref) == ("git", "HEAD")
    assert parse_source(f"{repo.work}#main").kind == "git"  # a working clone read through git
    url = parse_source("https://example.invalid/vms.git#prod")
    assert (url.kind, url.location, url.ref) == ("git", "https://example.invalid/vms.git", "prod")
    assert parse_source("git@example.invalid:vms.git").kind == "git"
    for bad in ("", "x#", f"{repo.bare}#--upload-pack=evil", f"{repo.bare}#a..b", "a\x1b[2Jb"):
        with pytest.raises(UsageError):
            parse_source(bad)
    with pytest.raises(SourceError, match="no such folder"):
        parse_source(str(tmp_path / "nothing"))


def test_git_revision_manifests_and_force_push(tmp_path: Path, repo: Repo) -> None:
    work = tmp_path / "gitops"
    first = git(repo.work, "rev-parse", "HEAD")
    snap = snapshot(parse_source(repo.source), work)
    assert snap.revision == first
    assert [e.path for e in snap.manifests] == ["a.toml", "web/b.yaml"]  # hidden skipped
    assert snap.read(snap.manifests)["a.toml"].decode() == VM.format(name="a")
    repo.write("a.toml", VM.format(name="a2"))
    second = repo.commit("two")
    assert snapshot(parse_source(repo.source), work).revision == second
    repo.force_back(first)  # the branch is rewritten: the fetch follows it
    assert snapshot(parse_source(repo.source), work).revision == first
    by_id = snapshot(parse_source(f"{repo.bare}#{second}"), work)  # a commit id as the ref
    assert by_id.revision == second


def test_failed_fetches_are_errors_and_change_nothing(tmp_path: Path, repo: Repo) -> None:
    work = tmp_path / "gitops"
    good = snapshot(parse_source(repo.source), work)
    with pytest.raises(SourceError, match="git fetch failed"):
        snapshot(parse_source(f"{repo.bare}#no-such-branch"), work)
    gone = tmp_path / "moved.git"
    os.rename(repo.bare, gone)  # the remote is unreachable
    spec = parse_source(f"file://{repo.bare}#main")
    with pytest.raises(SourceError) as info:
        snapshot(spec, work)
    assert info.value.hint and "nothing was changed" in info.value.hint
    os.rename(gone, repo.bare)
    assert snapshot(parse_source(repo.source), work).revision == good.revision


def test_no_hook_runs(tmp_path: Path, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks from the user's git configuration (and the cache repository's) never run."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    ran = tmp_path / "ran"
    for hook in ("reference-transaction", "post-checkout", "post-merge", "pre-auto-gc"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {ran}\n")
        (hooks / hook).chmod(0o755)
    config = tmp_path / "gitconfig"
    config.write_text(f"[core]\n\thooksPath = {hooks}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    snap = snapshot(parse_source(repo.source), tmp_path / "gitops")
    materialize(snap)
    assert not ran.exists()


def test_symlinks_never_lead_out_of_the_tree(tmp_path: Path, repo: Repo) -> None:
    secret = tmp_path / "secret.toml"
    secret.write_text(VM.format(name="secret"))
    os.symlink(str(secret), repo.work / "out.toml")
    os.symlink("../../secret.toml", repo.work / "web" / "up.toml")
    os.symlink("web/b.yaml", repo.work / "inside.yaml")
    repo.commit("links")
    snap = snapshot(parse_source(repo.source), tmp_path / "gitops")
    paths = {e.path: e for e in snap.manifests}
    assert "out.toml" not in paths and "web/up.toml" not in paths
    assert paths["inside.yaml"].blob == paths["web/b.yaml"].blob  # read through the tree
    refused = sorted(str(i.mark.file) for i in snap.issues if i.mark)
    assert refused == ["out.toml", "web/up.toml"]
    materialize(snap)
    root = Path(snap.root)
    assert not (root / "out.toml").exists() and not os.path.lexists(root / "web" / "up.toml")
    assert os.readlink(root / "inside.yaml") == "web/b.yaml"


def test_materialize_is_exactly_the_revision(tmp_path: Path, repo: Repo) -> None:
    work = tmp_path / "gitops"
    snap = snapshot(parse_source(repo.source), work)
    materialize(snap)
    root = Path(snap.root)
    assert (root / "a.toml").read_text() == VM.format(name="a")
    assert (root / "README.md").exists() and (root / INDEX).exists()
    (root / "mine.txt").write_text("not svlaunch's")  # a file svlaunch did not write
    inode = (root / "web" / "b.yaml").stat().st_ino
    repo.remove("a.toml")
    repo.write("new/d.toml", VM.format(name="d"))
    repo.commit("two")
    snap2 = snapshot(parse_source(repo.source), work)
    materialize(snap2)
    assert not (root / "a.toml").exists()
    assert (root / "new" / "d.toml").exists()
    assert (root / "mine.txt").exists()
    assert (root / "web" / "b.yaml").stat().st_ino == inode  # unchanged files are left alone


def test_folder_source(tmp_path: Path) -> None:
    folder = tmp_path / "vms"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.toml").write_text(VM.format(name="a"))
    (folder / "sub" / "b.toml").write_text(VM.format(name="b"))
    (folder / ".git").mkdir()
    (folder / ".git" / "x.toml").write_text("hidden")
    os.symlink(tmp_path / "elsewhere.toml", folder / "link.toml")
    (tmp_path / "elsewhere.toml").write_text(VM.format(name="x"))
    spec = parse_source(str(folder))
    snap = snapshot(spec, tmp_path / "gitops")
    assert [e.path for e in snap.manifests] == ["a.toml", "sub/b.toml"]
    assert [i.code for i in snap.issues] == ["file-unreadable"]
    assert snap.root == str(folder)
    (folder / "a.toml").write_text(VM.format(name="a") + "# edited\n")
    assert snapshot(spec, tmp_path / "gitops").revision != snap.revision
