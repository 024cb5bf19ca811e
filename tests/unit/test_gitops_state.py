"""The host state file and the per-VM record: atomic, versioned, and survivable when lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher import runtime
from launcher.gitops.state import (
    HostState,
    VmRecord,
    VmState,
    gitops_dir,
    load_state,
    read_record,
    save_state,
    write_record,
)


@pytest.fixture(autouse=True)
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SVLAUNCH_RUNTIME_DIR", str(tmp_path / "rt"))
    return tmp_path / "rt"


def test_round_trip_and_mode(root: Path) -> None:
    state = HostState("h1", "src#main", "abc")
    state.vms["web"] = VmState("src#main", "abc", "web.toml", "f" * 64, created=True)
    save_state(state)
    path = root / ".gitops" / "state.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((root / ".gitops").stat().st_mode & 0o777) == "0o700"
    assert json.loads(path.read_text())["version"] == 1
    again = load_state("h1")
    assert again.vms["web"].created and again.vms["web"].model_hash == "f" * 64
    assert again.note == ""
    assert not list((root / ".gitops").glob(".*.tmp"))  # no scratch file left


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": 99, "host": "h1", "vms": {}}', '{"version": 1, "host": "h1", '
     '"vms": {"x": {"model_hash": 5}}}', "[]", ""],
)  # fmt: skip
def test_a_corrupt_state_is_rebuilt_and_kept_aside(root: Path, content: str) -> None:
    folder = gitops_dir()
    (folder / "state.json").write_text(content)
    looked = load_state("h1")  # a diff: says so, moves nothing
    assert "corrupt" in looked.note and (folder / "state.json").exists()
    repaired = load_state("h1", repair=True)
    assert "rebuilt from the running VMs" in repaired.note
    assert (folder / "state.json.corrupt").read_text() == content
    assert not (folder / "state.json").exists()


def test_another_hosts_state_is_not_used(root: Path) -> None:
    save_state(HostState("h1", vms={"a": VmState(created=True)}))
    other = load_state("h2")
    assert other.vms == {} and "belongs to host 'h1'" in other.note


def test_adoption_from_records_in_runtime_folders(root: Path) -> None:
    """A record in a (live) VM folder brings its entry back; the lock held stands for the
    engine (tests/kvm tests adoption with real engines)."""
    claim = runtime.claim("web")
    try:
        rec = VmRecord("h1", "src#main", "abc", "web.toml", "1" * 64, "name = 'web'", "toml", "/s")
        write_record(claim.vm, rec)
        assert read_record(claim.vm) == rec
        state = load_state("h1")
        assert "1 adopted" in state.note
        web = state.vms["web"]
        assert (web.created, web.adopted, web.model_hash, web.path) == (
            True,
            True,
            "1" * 64,
            "web.toml",
        )
        assert load_state("h2").vms["web"].created is False  # another host's record: not ours
    finally:
        claim.release()
        claim.vm.remove()
    assert not os.path.exists(root / "web")  # the record is removed with the VM's folder
