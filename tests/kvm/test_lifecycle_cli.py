"""Runtime state and the lifecycle commands (ps, status, qmp, events, down, console).

A "VM" here is a real separate process serving the real QMP server over a real unix socket,
holding the runtime lock the way ``svlaunch up`` hands it to the engine; its VmControl is the
small in-test one. (`up` itself, with the builtin engine, is tested in test_lifecycle_up.py.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import runtime
from launcher.cli import main
from launcher.errors import HostError

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "support"

SERVE = textwrap.dedent(
    """
    import os, signal, socket, sys, threading, time
    sys.path.insert(0, {tests!r})
    from fakevm import FakeVm
    from engine.qmp.server import QmpServer
    name, qmp, serial, mode = sys.argv[1:5]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    vm = FakeVm(name)
    if mode in ("stubborn", "deaf"):
        vm.powerdown = lambda: None            # a guest that ignores the power button
    if mode == "stubborn":
        vm.quit = lambda: None                 # and an engine that ignores quit
    srv = QmpServer(vm, [qmp]); vm.sink = srv; srv.start()
    ls = socket.socket(socket.AF_UNIX); ls.bind(serial); ls.listen(1)
    def echo():
        c, _ = ls.accept()
        c.sendall(b"login: ")
        while (d := c.recv(100)):
            c.sendall(b"echo:" + d)
    threading.Thread(target=echo, daemon=True).start()
    print("ready", flush=True)
    while not (vm.quit_called.is_set() or vm.powerdown_called.is_set()):
        time.sleep(0.02)
    time.sleep(0.1)
    srv.close()
    """
).format(tests=str(TESTS))


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "rt"
    monkeypatch.setenv("SVLAUNCH_RUNTIME_DIR", str(d))
    return d


def start_fake(name: str, mode: str = "normal") -> tuple[subprocess.Popen[bytes], runtime.Meta]:
    claim = runtime.claim(name)
    vm = claim.vm
    # as 'svlaunch up' does: the engine's sockets in the VM folder are recorded before it runs
    vm.note(*(runtime.Made(s, "socket", "engine") for s in ("qmp.sock", "serial.sock")))
    os.set_inheritable(claim.lock_fd, True)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, name, str(vm.qmp_socket), str(vm.serial_socket), mode],
        pass_fds=(claim.lock_fd,),
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    claim.release()
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    meta = runtime.Meta(
        name=name,
        pid=proc.pid,
        pid_start=runtime.process_start_time(proc.pid),
        started=time.time() - 65,
        qmp=str(vm.qmp_socket),
        serial=str(vm.serial_socket),
        vcpus=2,
        memory=256 << 20,
    )
    vm.write_meta(meta)
    return proc, meta


@pytest.fixture
def fake_vm() -> Iterator[tuple[subprocess.Popen[bytes], runtime.Meta]]:
    proc, meta = start_fake("web1")
    yield proc, meta
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- runtime directory ---------------------------------------------------------------------------


def test_runtime_root_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert runtime.runtime_root() == tmp_path / "rt"
    monkeypatch.delenv("SVLAUNCH_RUNTIME_DIR")
    expected = "/run/svlaunch" if os.geteuid() == 0 else None
    if expected:
        assert str(runtime.runtime_root()) == expected


def test_second_vm_with_a_running_name_is_refused(fake_vm) -> None:
    with pytest.raises(HostError, match="already running") as err:
        runtime.claim("web1")
    assert "svlaunch down web1" in err.value.hint
    other = runtime.claim("web2")  # another name is fine
    other.release()


def test_stale_state_of_a_crashed_engine_is_cleaned(fake_vm, runtime_dir: Path) -> None:
    proc, _ = fake_vm
    proc.kill()
    proc.wait()
    assert (runtime_dir / "web1" / "meta.json").exists()
    with pytest.raises(HostError, match="not running"):
        runtime.find("web1")
    assert not (runtime_dir / "web1").exists()
    # ... and the name can be used again at once.
    claim = runtime.claim("web1")
    claim.release()


def test_bad_names_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "status", "../etc")
    assert code == 2
    assert "invalid VM name" in err and "Traceback" not in err


# -- commands ------------------------------------------------------------------------------------


def test_ps_text_and_json(fake_vm, capsys: pytest.CaptureFixture[str]) -> None:
    proc, _ = fake_vm
    code, out, _ = cli(capsys, "ps")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "NAME", "STATE", "PID", "SUPERVISOR", "VCPUS", "MEMORY", "UPTIME", "ENDED", "REVISION",
        "DRIFT",
    ]  # fmt: skip
    assert row.split()[:6] == ["web1", "running", str(proc.pid), "-", "2", "256M"]
    assert row.split()[6].startswith("0:01:0")
    assert row.split()[7] == "-"  # no earlier run of this name
    assert row.split()[8:] == ["-", "-"]  # not started by svlaunch apply
    code, out, _ = cli(capsys, "ps", "--json")
    [entry] = json.loads(out)
    assert entry["name"] == "web1" and entry["state"] == "running" and entry["pid"] == proc.pid


def test_qmp_command_and_status(fake_vm, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "qmp", "web1", "stop")
    assert code == 0 and json.loads(out) == {}
    code, out, _ = cli(capsys, "qmp", "web1", "query-status")
    assert json.loads(out)["status"] == "paused"
    code, out, _ = cli(capsys, "status", "web1", "--json")
    info = json.loads(out)
    assert info["state"] == "paused" and len(info["vcpus"]) == 2
    assert info["balloon"] == 256 << 20
    code, out, _ = cli(capsys, "qmp", "web1", "balloon", "value=134217728")
    assert code == 0
    code, out, err = cli(capsys, "qmp", "web1", "stop")
    assert code == 1 and "GenericError" in err and "Traceback" not in err
    code, out, err = cli(capsys, "qmp", "web1", "blockdev-add", "node-name=d0", "file.filename=/x")
    assert code == 0, err


def test_qmp_pairs_parse() -> None:
    from launcher.commands.qmp import parse_pairs

    assert parse_pairs(["value=5", "file.filename=/a b", "ro=true", "addr=0x1"]) == {
        "value": 5,
        "file": {"filename": "/a b"},
        "ro": True,
        "addr": "0x1",
    }


def test_events_ndjson(fake_vm, capsys: pytest.CaptureFixture[str]) -> None:
    _, meta = fake_vm

    def later() -> None:
        time.sleep(0.5)
        from launcher.qmpclient import QmpClient

        with QmpClient.connect(meta.qmp) as c:
            c.execute("stop")
            c.execute("cont")

    import threading

    t = threading.Thread(target=later, daemon=True)
    t.start()
    code, out, _ = cli(capsys, "events", "web1", "--json", "--count", "2", "--timeout", "10")
    t.join(5)
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["event"] for x in lines] == ["STOP", "RESUME"]
    assert set(lines[0]["timestamp"]) == {"seconds", "microseconds"}


def test_console_relays_both_ways(fake_vm, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "console", "web1", "--timeout", "1.5"],
        input=b"hello\n",
        capture_output=True,
        cwd=ROOT,
        env={**os.environ},
        timeout=20,
    )
    assert res.returncode == 0, res.stderr
    assert b"login: " in res.stdout and b"echo:hello" in res.stdout


def test_down_powers_off_and_cleans(fake_vm, capsys, runtime_dir: Path) -> None:
    proc, _ = fake_vm
    code, out, _ = cli(capsys, "down", "web1")
    assert code == 0 and "powered off" in out
    assert proc.wait(5) == 0
    assert not (runtime_dir / "web1").exists()
    code, _, err = cli(capsys, "down", "web1")
    assert code == 1 and "no VM named 'web1'" in err


def test_down_escalates_to_quit_then_signals(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.commands import down

    proc, meta = start_fake("deaf", "deaf")
    code, out, err = cli(capsys, "down", "deaf", "--timeout", "0.5")
    assert code == 0 and "quit" in out and "did not power off" in err
    proc.wait(5)

    monkeypatch.setattr(down, "QUIT_TIMEOUT", 0.5)
    monkeypatch.setattr(down, "SIGNAL_TIMEOUT", 1.0)
    proc, meta = start_fake("stubborn", "stubborn")
    how = down.stop_vm(
        meta, force=False, guest_timeout=0.3, wait=lambda t: _waitpid(proc, t), say=lambda s: None
    )
    assert how == "killed (SIGKILL)"
    assert proc.returncode == -signal.SIGKILL


def _waitpid(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_unreachable_qmp_is_a_clear_error(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "qmp", f"unix:{tmp_path}/nothing.sock", "query-status")
    assert code == 1
    assert "cannot connect to QMP socket" in err and "Traceback" not in err


def test_lock_outlives_the_launcher(runtime_dir: Path) -> None:
    """The engine keeps the VM's name after the launcher process has gone (detached VMs)."""
    proc, meta = start_fake("bg")
    try:
        vm = runtime.find("bg")
        assert vm.lock_held()
        s = socket.socket(socket.AF_UNIX)
        s.connect(meta.qmp)
        s.close()
    finally:
        proc.kill()
        proc.wait()
    assert not runtime.VmDir("bg", runtime_dir / "bg").lock_held()


def test_log_like_stratovirt_dash_d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from engine.logsetup import configure_logging

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        monkeypatch.setenv("SVLAUNCH_LOG_LEVEL", "warn")
        log = tmp_path / "engine.log"
        configure_logging(True, str(log))
        logging.getLogger("engine.test").info("hidden")
        logging.getLogger("engine.test").warning("shown")
        for h in root.handlers:
            h.flush()
        text = log.read_text()
        assert "shown" in text and "hidden" not in text
        assert (log.stat().st_mode & 0o777) == 0o640
    finally:
        for h in root.handlers[len(before[0]) :]:
            root.removeHandler(h)
        root.setLevel(before[1])
