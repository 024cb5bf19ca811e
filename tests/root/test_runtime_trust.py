"""Which runtime folders svlaunch trusts (issue 13, findings 3 and 15): the non-root fallback
``/tmp/svlaunch-<uid>`` and ``$XDG_RUNTIME_DIR`` only when they belong to the user and nobody else
can enter them; a read-only runtime folder is a clear error.

Root is needed to play two users: the test makes a folder as root (the "other user") and then
runs svlaunch's code as an unprivileged uid (``setresuid`` keeps saved uid 0 to come back).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lifecycle import manifest, svl
from tiny_guest import HANG

from launcher import runtime
from launcher.cli import main

USER = 64911  # a uid no account on a test host is expected to have


@contextlib.contextmanager
def as_user(uid: int = USER) -> Iterator[None]:
    os.setresgid(uid, uid, 0)
    os.setresuid(uid, uid, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``/tmp/svlaunch-<USER>``, made by root (someone else) with a planted VM in it."""
    monkeypatch.delenv("SVLAUNCH_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    root = Path(f"/tmp/svlaunch-{USER}")
    shutil.rmtree(root, ignore_errors=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _plant(root: Path, pid: int) -> None:
    """What another user can leave there: a readable VM folder whose meta names ``pid``."""
    vm = root / "vm"
    vm.mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(vm, 0o755)
    (vm / "lock").write_text("")
    start = runtime.process_start_time(pid)
    (vm / "meta.json").write_text(
        f'{{"name": "vm", "pid": {pid}, "pid_start": {start}, "started": 0, "qmp": "/nowhere"}}'
    )


def test_a_fallback_root_made_by_another_user_is_refused(fallback: Path, capsys) -> None:
    victim = subprocess.Popen(["sleep", "60"], user=USER)  # a process of the user's own
    try:
        _plant(fallback, victim.pid)
        with as_user():
            assert runtime.runtime_root() == fallback
            code = main(["down", "--force", "vm"])
        err = capsys.readouterr().err
        assert code == 1 and "belongs to uid 0" in err and "does not trust" in err, err
        assert victim.poll() is None, "svlaunch signalled a pid planted by another user"
        with as_user():
            assert main(["ps"]) == 1
    finally:
        victim.kill()
        victim.wait()


def test_a_fallback_root_others_can_write_is_refused(fallback: Path, capsys) -> None:
    fallback.mkdir(mode=0o700)
    os.chown(fallback, USER, USER)
    os.chmod(fallback, 0o777)
    with as_user():
        code = main(["ps"])
    err = capsys.readouterr().err
    assert code == 1 and "mode 0777" in err and "chmod 700" in err, err
    os.chmod(fallback, 0o700)
    with as_user():
        assert main(["ps"]) == 0


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder the unprivileged uid can reach (pytest's tmp_path is root's, 0700)."""
    d = Path(tempfile.mkdtemp(prefix="svl-trust-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_xdg_runtime_dir_is_trusted_only_when_private(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("SVLAUNCH_RUNTIME_DIR", raising=False)
    xdg = shared_tmp / "xdg"
    xdg.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    with as_user():  # root's folder
        assert main(["ps"]) == 1
    assert "XDG_RUNTIME_DIR" in capsys.readouterr().err
    os.chown(xdg, USER, USER)
    os.chmod(xdg, 0o755)
    with as_user():  # the user's, but open to others
        assert main(["ps"]) == 1
    assert "mode 0755" in capsys.readouterr().err
    os.chmod(xdg, 0o700)
    with as_user():
        assert main(["ps"]) == 0
        assert runtime.runtime_root() == xdg / "svlaunch"


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_runtime_folder_is_a_clear_error(
    tmp_path: Path, readonly: Path, existing: bool
) -> None:
    if existing:
        (readonly / "rt").mkdir(mode=0o700)
    subprocess.run(["mount", "-o", "remount,ro", readonly], check=True)
    env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(readonly / "rt")}
    res = svl(env, "up", "-d", str(manifest(tmp_path, "vm", HANG)))
    assert res.returncode == 1, res.stderr
    assert "runtime folder" in res.stderr and "Read-only file system" in res.stderr, res.stderr
