"""`svlaunch up` end to end: manifest -> plan -> engine process on host KVM -> QMP -> down.

The kernel is one of the tests' tiny guests (it prints on COM1, then halts or powers off), so
this runs on the host without the nested rig.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lifecycle import ROOT, manifest, svl, wait_gone
from tiny_guest import HANG, hello_poweroff, say

pytestmark = pytest.mark.kvm


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}


def test_detached_paused_then_cont_console_and_down(tmp_path: Path, env) -> None:
    vm = manifest(tmp_path, "tiny", say(b"hi from tiny\n") + HANG)
    res = svl(env, "up", "-d", "--paused", str(vm))
    assert res.returncode == 0, res.stderr
    assert "tiny: started" in res.stdout

    ps = json.loads(svl(env, "ps", "--json").stdout)
    assert [(r["name"], r["state"]) for r in ps] == [("tiny", "prelaunch")]
    pid = ps[0]["pid"]

    again = svl(env, "up", "-d", str(vm))
    assert again.returncode == 1 and "already running" in again.stderr

    serial = socket.socket(socket.AF_UNIX)
    serial.connect(ps[0]["serial"])
    serial.settimeout(20)
    assert svl(env, "qmp", "tiny", "cont").returncode == 0
    got = b""
    while b"hi from tiny" not in got:
        chunk = serial.recv(4096)
        assert chunk, f"console closed; got {got!r}"
        got += chunk
    serial.close()
    assert json.loads(svl(env, "ps", "--json").stdout)[0]["state"] == "running"

    down = svl(env, "down", "tiny", "--timeout", "1")
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(f"/proc/{pid}") or wait_gone(pid)
    assert not (tmp_path / "rt" / "tiny").exists()
    assert json.loads(svl(env, "ps", "--json").stdout) == []


def test_foreground_serial_on_the_terminal_and_clean_exit(tmp_path: Path, env) -> None:
    vm = manifest(tmp_path, "fg", hello_poweroff(b"bye from fg\n"))
    res = svl(env, "up", str(vm), input="")  # a pipe: the engine polls stdin (a tty in real use)
    assert res.returncode == 0, res.stderr
    assert "bye from fg" in res.stdout
    assert not (tmp_path / "rt" / "fg").exists()


def test_a_missing_kernel_is_a_located_error_before_any_engine_starts(tmp_path: Path, env) -> None:
    vm = manifest(tmp_path, "nokernel", hello_poweroff(b"never\n"))
    (tmp_path / "nokernel.elf").unlink()
    res = svl(env, "up", str(vm), input="")
    assert res.returncode == 1
    assert (
        f"{vm}:" in res.stderr and "error[host-file]" in res.stderr and "boot.kernel" in res.stderr
    )
    assert "Traceback" not in res.stderr and "engine exited" not in res.stderr
    assert not (tmp_path / "rt" / "nokernel").exists()


@pytest.mark.traceback_ok  # a broken engine build is a bug: its traceback is the right output
def test_a_broken_virtio_factory_fails_the_start_and_names_the_import(tmp_path: Path, env) -> None:
    """A broken engine build (here: engine/virtio/factory.py cannot be imported, in a copy of
    the project) must fail ``up`` with the real cause, never pass as a missing feature: every
    microvm creates virtio transports (its empty hot-replace slots), so no VM can start."""
    tree = tmp_path / "tree"
    for top in ("engine", "launcher", "schema"):
        shutil.copytree(ROOT / top, tree / top, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "engine" / "virtio" / "factory.py").write_text(
        'raise ImportError("svtest: this engine build has a broken virtio factory")\n'
    )
    vm = manifest(tmp_path, "broken", hello_poweroff(b"never\n"))
    res = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "up", str(vm)],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0, res.stdout
    assert "svtest: this engine build has a broken virtio factory" in res.stderr, res.stderr
    assert "not available in this engine build" not in res.stderr
    assert "never" not in res.stdout
