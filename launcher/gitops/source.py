"""Reading a source: a folder as it is, or a git repository at a ref, through real git.

A git source is fetched into a bare repository of svlaunch's own under the runtime root
(``.gitops/git/<id>.git``) and read from there with ``ls-tree`` and ``cat-file``: reading a
revision runs no checkout, so no hook can run (every git command also gets
``core.hooksPath=/dev/null``) and no file of the revision is written before the revision was
validated. ``materialize`` (``launcher/gitops/materialize.py``) then writes the revision's
files into one stable folder per source (``.gitops/trees/<id>/``; stable, so that a path
relative to a manifest means the same absolute path in every revision), file by file with a
rename each. A symlink in the tree is kept only
when it points inside the tree; a manifest that is a symlink is read through the tree, never
from outside it. A fetch or read that fails raises ``SourceError`` and changes nothing.

A folder source is read in place (hidden folders skipped, as ``svlaunch validate`` does); its
revision is a hash of every manifest's path and content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import HostError, Issue, Mark

MANIFEST_SUFFIXES = (".toml", ".yaml", ".yml")
INVENTORY = ".svlaunch/hosts.toml"  # the optional host inventory (launcher.gitops.inventory)
MAX_MANIFEST = 1 << 20  # the loader's limit (launcher.manifest.load.MAX_BYTES)
MAX_ENTRIES = 100_000  # files in one revision
FETCH_TIMEOUT = 120.0
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[^/:]+@[^/:]+:)", re.IGNORECASE)
#: git's environment: never a prompt (an agent has no terminal), never the user's config hooks
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}
_GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "protocol.ext.allow=never"]


class SourceError(HostError):
    """The source cannot be read: nothing is applied, destroyed or restarted."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What the user named: a folder, or a git URL with an optional ``#REF``."""

    text: str
    kind: str  # "folder" | "git"
    location: str  # an absolute folder, or the URL (a local repository's absolute path)
    ref: str  # "" for a folder; "HEAD" when no ref was given

    @property
    def key(self) -> str:
        """A short stable id of the source (its cache and tree folder names)."""
        return hashlib.sha256(f"{self.kind}\0{self.location}".encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return self.location if self.kind == "folder" else f"{self.location}#{self.ref}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a revision: its path in the tree ('/'-separated) and content id."""

    path: str
    blob: str  # a git blob id, or the sha256 of a folder file's content
    size: int
    mode: str = "file"  # "file" | "exec" | "link"


@dataclass
class Snapshot:
    """A revision of a source: its manifests (paths and content ids) and where they live."""

    spec: SourceSpec
    revision: str  # a commit id, or "folder:<sha256>"
    root: str  # the folder paths in the tree resolve against (git: after ``materialize``)
    manifests: list[Entry]
    inventory: Entry | None = None
    issues: list[Issue] = field(default_factory=list)  # entries refused (links out, too large)
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)
    _repo: str = ""  # the git cache repository ("" for a folder)
    _content: dict[str, bytes] = field(default_factory=dict, repr=False)  # a folder's files

    def read(self, entries: Iterable[Entry]) -> dict[str, bytes]:
        """The content of ``entries`` (path -> bytes), in one git call for a git source."""
        wanted = list(entries)
        if not self._repo:
            return {e.path: self._content[e.path] for e in wanted}
        blobs = cat_blobs(self._repo, [e.blob for e in wanted])
        return {e.path: blobs[e.blob] for e in wanted}

    def file(self, entry: Entry) -> str:
        """The absolute path of ``entry`` once the revision's files are there."""
        return os.path.join(self.root, *entry.path.split("/"))


def parse_source(text: str) -> SourceSpec:
    """A folder, ``PATH#REF``/``URL[#REF]`` (git), or a bare or working git repository path
    ending in ``.git``. A plain folder is read as it is, uncommitted edits included; write
    ``PATH#main`` (or ``file://PATH``) to read a local repository through git."""
    from launcher.errors import UsageError

    if not text or any(not c.isprintable() for c in text):
        raise UsageError(f"invalid source {text!r}", hint="a folder, or a git URL such as URL#main")
    location, hashmark, ref = text.partition("#")
    if hashmark and not ref:
        raise UsageError(f"source {text!r} ends in '#' without a ref", hint="write URL#main")
    if ref and (ref.startswith("-") or any(c.isspace() for c in ref) or ".." in ref):
        raise UsageError(f"invalid git ref {ref!r}", hint="a branch, tag or commit id")
    if _URL.match(location):
        return SourceSpec(text, "git", location, ref or "HEAD")
    path = os.path.abspath(location)
    if hashmark or location.endswith(".git") or _is_bare_repo(path):
        if not os.path.isdir(path):
            raise SourceError(
                f"source {location}: no such repository", hint="check the path (or the URL)"
            )
        return SourceSpec(text, "git", path, ref or "HEAD")
    if not os.path.isdir(path):
        raise SourceError(
            f"source {location}: no such folder",
            hint="name a folder of manifests or a git URL (URL#ref)",
        )
    return SourceSpec(text, "folder", path, "")


def _is_bare_repo(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, p)) for p in ("HEAD", "objects", "refs"))


def snapshot(spec: SourceSpec, workdir: Path, timeout: float = FETCH_TIMEOUT) -> Snapshot:
    """The source's current revision: fetched (git) or scanned (folder). ``workdir`` is the
    GitOps folder under the runtime root (``launcher.gitops.state.gitops_dir``)."""
    if spec.kind == "folder":
        return _scan_folder(spec)
    repo = workdir / "git" / f"{spec.key}.git"
    commit = _fetch(spec, repo, timeout)
    root = workdir / "trees" / spec.key
    snap = Snapshot(spec, commit, str(root), [], _repo=str(repo))
    _list_tree(snap, commit)
    return snap


def snapshot_at(spec: SourceSpec, workdir: Path, commit: str) -> Snapshot | None:
    """An earlier revision of a git source, from the cache alone (no fetch): the agent's last
    good revision while the newest is invalid. None for a folder or a commit not cached."""
    if spec.kind != "git" or not _SHA.fullmatch(commit):
        return None
    repo = workdir / "git" / f"{spec.key}.git"
    try:
        git(str(repo), "cat-file", "-e", commit + "^{commit}")
    except SourceError:
        return None
    snap = Snapshot(spec, commit, str(workdir / "trees" / spec.key), [], _repo=str(repo))
    _list_tree(snap, commit)
    return snap


# -- git ----------------------------------------------------------------------------------------


def git(repo: str | None, *args: str, timeout: float = FETCH_TIMEOUT, data: bytes = b"") -> bytes:
    """Run git (no hooks, no prompt) and return its stdout; ``SourceError`` with git's own
    last words when it fails."""
    argv = [*_GIT, *(["--git-dir", repo] if repo else []), *args]
    env = {**os.environ, **GIT_ENV}
    try:
        res = subprocess.run(
            argv, input=data, capture_output=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError:
        raise SourceError(
            "git is not installed", hint="install git (apt-get install git)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SourceError(
            f"git {args[0]} took longer than {timeout:g} s", hint="check the network and the URL"
        ) from None
    if res.returncode != 0:
        words = res.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SourceError(
            f"git {args[0]} failed: " + (" / ".join(words) or f"exit {res.returncode}"),
            hint="check the URL, the ref and the network; nothing was changed",
        )
    return res.stdout


def _fetch(spec: SourceSpec, repo: Path, timeout: float) -> str:
    """Fetch ``spec.ref`` into the cache repository; the commit it names. A force-pushed ref
    is followed (the refspec forces); a ref that vanished is an error."""
    if not (repo / "HEAD").exists():
        repo.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = repo.with_name(repo.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            _rmtree(scratch)
        git(None, "init", "--bare", "--quiet", str(scratch))
        os.rename(scratch, repo)
    target = "refs/svlaunch/fetched"
    ref = spec.ref
    if _SHA.fullmatch(ref):  # a commit id: fetch it (or every branch, for old servers)
        try:
            git(
                str(repo),
                "fetch",
                "--quiet",
                "--no-tags",
                "--",
                spec.location,
                ref,
                timeout=timeout,
            )
        except SourceError:
            git(
                str(repo), "fetch", "--quiet", "--no-tags", "--", spec.location,
                "+refs/heads/*:refs/svlaunch/heads/*", timeout=timeout,
            )  # fmt: skip
        try:
            git(str(repo), "update-ref", target, ref + "^{commit}")
        except SourceError:
            raise SourceError(
                f"commit {ref} is not in {spec.location}", hint="check the commit id"
            ) from None
    else:
        git(
            str(repo), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--",
            spec.location, f"+{ref}:{target}", timeout=timeout,
        )  # fmt: skip
    return git(str(repo), "rev-parse", "--verify", target + "^{commit}").decode().strip()


def _list_tree(snap: Snapshot, commit: str) -> None:
    """The revision's files, from ``ls-tree`` (modes, blob ids, sizes)."""
    out = git(snap._repo, "ls-tree", "-r", "-z", "-l", "--full-tree", commit)
    entries: dict[str, Entry] = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, raw = record.partition(b"\t")
        mode, kind, blob, size = meta.split()
        path = raw.decode("utf-8", "surrogateescape")
        if kind != b"blob":  # a submodule (commit): nothing svlaunch can read
            continue
        how = {b"120000": "link", b"100755": "exec"}.get(mode, "file")
        entries[path] = Entry(path, blob.decode(), int(size) if size != b"-" else 0, how)
        if len(entries) > MAX_ENTRIES:
            raise SourceError(
                f"revision {commit[:12]} has more than {MAX_ENTRIES} files",
                hint="keep manifests in a repository of their own",
            )
    snap._entries = entries
    links = {p: e for p, e in entries.items() if e.mode == "link"}
    targets = cat_blobs(snap._repo, [e.blob for e in links.values()]) if links else {}
    for path, entry in sorted(entries.items()):
        if _hidden(path):
            if path == INVENTORY:
                snap.inventory = _through_links(snap, entry, targets)
            continue
        if not path.endswith(MANIFEST_SUFFIXES):
            continue
        found = _through_links(snap, entry, targets)
        if found is not None:
            snap.manifests.append(Entry(path, found.blob, found.size, found.mode))


def _through_links(snap: Snapshot, entry: Entry, targets: dict[str, bytes]) -> Entry | None:
    """``entry``, or the file its symlink names inside the tree (None, with an issue, when it
    leaves the tree, loops or names nothing)."""
    seen = 0
    while entry.mode == "link":
        target = targets[entry.blob].decode("utf-8", "surrogateescape")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), target))
        nxt = snap._entries.get(resolved)
        seen += 1
        if posixpath.isabs(target) or resolved.startswith("../") or nxt is None or seen > 8:
            snap.issues.append(
                Issue(
                    f"symlink to {target!r} does not name a file of the repository; svlaunch"
                    " never follows a link out of it",
                    mark=Mark(entry.path),
                    code="file-unreadable",
                    hint="commit the manifest itself, not a link",
                )
            )
            return None
        entry = nxt
    return entry


def cat_blobs(repo: str, blobs: list[str]) -> dict[str, bytes]:
    """Blob contents by id, through one ``cat-file --batch``."""
    if not blobs:
        return {}
    unique = list(dict.fromkeys(blobs))
    out = git(repo, "cat-file", "--batch", data="".join(b + "\n" for b in unique).encode())
    found: dict[str, bytes] = {}
    at = 0
    for blob in unique:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        if len(header) != 3 or header[1] != b"blob":
            raise SourceError(f"git object {blob} is missing from the fetched revision")
        size = int(header[2])
        found[blob] = out[end + 1 : end + 1 + size]
        at = end + 1 + size + 1
    return found


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


# -- folders ------------------------------------------------------------------------------------


def _scan_folder(spec: SourceSpec) -> Snapshot:
    """Every manifest under the folder (hidden folders skipped, no symlinked folder entered);
    a symlinked file counts only when it resolves inside the folder."""
    root = spec.location
    snap = Snapshot(spec, "", root, [])
    real_root = os.path.realpath(root)
    digest = hashlib.sha256()
    stack = [""]
    found: list[str] = []
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel)) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"cannot list {os.path.join(root, rel)}: {exc.strerror}") from None
        for item in items:
            path = f"{rel}/{item.name}" if rel else item.name
            if item.name.startswith("."):
                if path == ".svlaunch":
                    stack.append(path)
                continue
            if item.is_dir(follow_symlinks=False):
                stack.append(path)
            elif item.name.endswith(MANIFEST_SUFFIXES) or path == INVENTORY:
                found.append(path)
    from launcher.manifest.load import read_source

    for path in sorted(found):
        full = os.path.join(root, path)
        real = os.path.realpath(full)
        if os.path.commonpath([real, real_root]) != real_root:
            snap.issues.append(
                Issue(
                    "symlink out of the source folder; svlaunch never follows a link out of it",
                    mark=Mark(full),
                    code="file-unreadable",
                    hint="put the manifest itself in the folder",
                )
            )
            continue
        text, issues = read_source(full)
        if text is None:
            snap.issues += issues
            continue
        raw = text.encode("utf-8")
        blob = hashlib.sha256(raw).hexdigest()
        digest.update(f"{path}\0{blob}\0".encode("utf-8", "surrogateescape"))
        entry = Entry(path, blob, len(raw))
        snap._content[path] = raw
        if path == INVENTORY:
            snap.inventory = entry
        else:
            snap.manifests.append(entry)
    snap.revision = "folder:" + digest.hexdigest()[:16]
    return snap
