"""The lifecycle commands against a hostile neighbourhood: two VMs naming one path, a socket taken
over by an impostor, a pid that is no longer the engine, symlinks and strangers' files in the
runtime folder, a umask of 000.

Each case runs the real CLI (``svlaunch up -d`` starts real engines on this host's KVM with tiny
guests), asserts that no user input produced a traceback, and, where a VM survives the case,
that its engine still answers ``query-status`` on a fresh connection within 100 ms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from lifecycle import ROOT, assert_answers, manifest, start_impostor, svl, wait_gone
from tiny_guest import HANG, say

GUEST = say(b"hi\n") + HANG


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}


@pytest.fixture(autouse=True)
def down_all(env):
    """After every case, each VM that survived it still answers ``query-status`` on a fresh
    connection within 100 ms; then whatever a case left running is stopped (a failed assertion
    must not leak engines)."""
    yield
    rows = json.loads(svl(env, "ps", "--json").stdout or "[]")
    try:
        for row in rows:
            if row["state"] in ("running", "paused"):
                assert_answers(row["qmp"], row["name"])
    finally:
        for row in rows:
            svl(env, "down", "--force", row["name"], "--timeout", "1")


def socket_serial(path: Path | str) -> str:
    return f'[serial]\nbackend = "socket"\npath = "{path}"\nserver = true\nnowait = true\n'


def up(env: dict[str, str], path: Path, *flags: str) -> subprocess.CompletedProcess:
    return svl(env, "up", "-d", *flags, str(path))


def ps(env: dict[str, str]) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(svl(env, "ps", "--json").stdout)}


# -- two VMs, one path (issue 13, finding 1) ---------------------------------------------------


def test_a_second_vm_on_a_live_qmp_path_is_refused_before_its_engine_starts(
    tmp_path: Path, env
) -> None:
    qmp = str(tmp_path / "shared.sock")
    a = manifest(tmp_path, "a", GUEST, top=f'qmp = "{qmp}"\n')
    b = manifest(tmp_path, "b", GUEST, top=f'qmp = "{qmp}"\n')
    assert up(env, a).returncode == 0
    res = up(env, b)
    assert res.returncode == 1 and "started" not in res.stdout
    engine = ps(env)["a"]["pid"]
    taken = f"error[host-socket]: socket {qmp} is in use by the running VM 'a' (pid {engine})"
    assert taken in res.stderr
    mine = svl(env, "check", str(a))  # the running VM's own manifest: its socket is no conflict
    assert mine.returncode == 0 and "host-socket" not in mine.stderr, mine.stderr
    assert "warning[host-running]: VM 'a' is running" in mine.stderr
    assert not (tmp_path / "rt" / "b").exists()  # a refused claim leaves nothing
    assert_answers(qmp, "a")  # the first VM's socket is intact and still its own
    gone = svl(env, "down", "--force", "b")
    assert gone.returncode == 1 and "no VM named 'b'" in gone.stderr
    assert ps(env)["a"]["state"] == "running"
    assert_answers(qmp, "a")


def test_a_second_vm_on_a_disk_or_file_another_vm_holds_is_refused(tmp_path: Path, env) -> None:
    """Paths that are not sockets (a writable disk, a chardev file the engine truncates) are
    checked against the record of every running VM."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    drive = f'[drives.d0]\nfile = "{disk}"\n'
    assert up(env, manifest(tmp_path, "a", GUEST, extra=drive)).returncode == 0
    res = up(env, manifest(tmp_path, "b", GUEST, extra=drive))
    assert res.returncode == 1 and f"{disk} (drive) belongs to the running VM 'a'" in res.stderr
    ro = drive + "readonly = true\n"  # read-only users of the same image are fine
    assert svl(env, "down", "a", "--force").returncode == 0
    assert up(env, manifest(tmp_path, "a", GUEST, extra=ro)).returncode == 0
    assert up(env, manifest(tmp_path, "b", GUEST, extra=ro)).returncode == 0
    assert sorted(ps(env)) == ["a", "b"]


def test_a_second_vm_on_a_live_serial_socket_is_refused(tmp_path: Path, env) -> None:
    sock = str(tmp_path / "console.sock")
    serial = socket_serial(sock)
    a = manifest(tmp_path, "a", GUEST, extra=serial)
    b = manifest(tmp_path, "b", GUEST, extra=serial)
    assert up(env, a).returncode == 0
    res = up(env, b)
    assert res.returncode == 1 and sock in res.stderr, res.stderr
    ino = os.lstat(sock).st_ino
    c = socket.socket(socket.AF_UNIX)
    c.connect(sock)  # still served (by a)
    c.close()
    assert svl(env, "down", "a", "--force").returncode == 0
    assert not os.path.lexists(sock) or os.lstat(sock).st_ino != ino


def test_an_impostor_on_the_qmp_path_is_refused_and_never_reported_started(
    tmp_path: Path, env
) -> None:
    qmp = str(tmp_path / "q.sock")
    impostor = start_impostor("vm", qmp)  # a QMP server that is no VM of svlaunch's
    try:
        res = up(env, manifest(tmp_path, "vm", GUEST, top=f'qmp = "{qmp}"\n'))
        assert res.returncode == 1 and "started" not in res.stdout
        assert f"process {impostor.pid}" in res.stderr, res.stderr
        assert impostor.poll() is None and os.path.exists(qmp)
        assert ps(env) == {}
    finally:
        impostor.kill()
        impostor.wait()


def test_up_waits_for_its_own_engine_not_whoever_answers(tmp_path: Path) -> None:
    """The start-up wait checks the listener's pid and name: an impostor never counts."""
    from launcher.commands.up import _wait_for_qmp
    from launcher.errors import EngineError
    from launcher.runtime import Meta

    qmp = str(tmp_path / "q.sock")
    impostor = start_impostor("vm", qmp)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meta = Meta("vm", engine.pid, None, 0.0, qmp)
        with pytest.raises(EngineError, match=f"answered by pid {impostor.pid}"):
            _wait_for_qmp(engine, meta, None, 1.0, detach=True)
        assert impostor.poll() is None  # nobody sent it anything but questions
    finally:
        for p in (engine, impostor):
            p.kill()
            p.wait()


def test_down_ps_qmp_never_talk_to_an_impostor(tmp_path: Path, env) -> None:
    qmp = str(tmp_path / "q.sock")
    assert up(env, manifest(tmp_path, "a", GUEST, top=f'qmp = "{qmp}"\n')).returncode == 0
    engine = ps(env)["a"]["pid"]
    os.unlink(qmp)  # someone takes the path over: same name, another process
    impostor = start_impostor("a", qmp)
    try:
        assert ps(env)["a"]["state"] == "impostor"
        res = svl(env, "qmp", "a", "query-status")
        assert res.returncode == 1 and f"answered by pid {impostor.pid}" in res.stderr
        res = svl(env, "status", "a")
        assert res.returncode == 1 and "refusing" in res.stderr
        res = svl(env, "down", "a", "--force")
        assert res.returncode == 0, res.stderr
        assert "refusing to talk" in res.stderr and f"SIGTERM to pid {engine}" in res.stderr
        assert wait_gone(engine)
        assert impostor.poll() is None, "down sent quit to a process that is not the VM"
        assert os.path.exists(qmp)  # and the impostor's socket was not removed
        assert_answers(qmp, "a")  # (the impostor, still serving)
    finally:
        impostor.kill()
        impostor.wait()


def test_the_dashboard_never_shows_an_impostor(
    tmp_path: Path, env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``top NAME`` and ``up --tui`` check the socket they talk to, on that very connection."""
    from launcher import runtime
    from launcher.identity import NotTheVm
    from launcher.tui_live import run_tui

    qmp = str(tmp_path / "q.sock")
    assert up(env, manifest(tmp_path, "a", GUEST, top=f'qmp = "{qmp}"\n')).returncode == 0
    monkeypatch.setenv("SVLAUNCH_RUNTIME_DIR", env["SVLAUNCH_RUNTIME_DIR"])
    meta = runtime.find("a").meta()
    assert meta is not None
    os.unlink(qmp)
    impostor = start_impostor("a", qmp)
    try:
        with pytest.raises(NotTheVm, match=f"answered by pid {impostor.pid}"):
            run_tui(meta.qmp, title="a", meta=meta)
        assert impostor.poll() is None
    finally:
        impostor.kill()
        impostor.wait()


def test_down_never_signals_a_process_that_is_not_the_engine(tmp_path: Path, env) -> None:
    """A recorded pid that now names another process (start time and all, as a planted or
    stale record would) is not signalled: its command line does not run the VM's plan."""
    from launcher.errors import HostError
    from launcher.identity import send_signal
    from launcher.runtime import Meta, VmDir, process_start_time

    assert up(env, manifest(tmp_path, "a", GUEST)).returncode == 0
    vm = VmDir("a", tmp_path / "rt" / "a")
    meta = Meta.from_json(json.loads((vm.path / "meta.json").read_text()))
    assert meta is not None and meta.plan == str(vm.plan_file)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start_time(bystander.pid)
        fake = dataclasses.replace(meta, pid=bystander.pid, pid_start=start)
        with pytest.raises(HostError, match="not signalling"):
            send_signal(fake, signal.SIGTERM)
        assert bystander.poll() is None
        assert send_signal(meta, signal.SIGKILL)  # the real engine: checked, signalled
        assert wait_gone(meta.pid)
    finally:
        bystander.kill()
        bystander.wait()
    assert svl(env, "ps", "--json").returncode == 0  # cleans the dead VM's folder
    assert not (tmp_path / "rt" / "a").exists()


def _engine_plan(tmp_path: Path, **changes: object) -> str:
    from tiny_guest import make_plan, write_guest

    plan = dataclasses.replace(make_plan(str(write_guest(tmp_path, GUEST))), **changes)
    (tmp_path / "plan.json").write_text(plan.dumps())
    return str(tmp_path / "plan.json")


def test_the_engine_never_removes_a_socket_it_did_not_bind(tmp_path: Path) -> None:
    """The engine started directly (no svlaunch checks before it): a live socket at its serial
    path makes it fail, and the other process's socket is left where it was."""
    from engine.__main__ import engine_argv
    from engine.plan import ChardevPlan, SerialPlan

    path = str(tmp_path / "serial.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    ino = os.lstat(path).st_ino
    serial = SerialPlan(ChardevPlan("s", "socket", path, server=True, nowait=True))
    argv = engine_argv(_engine_plan(tmp_path, serial=serial))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert f"process {os.getpid()}" in res.stderr and "Traceback" not in res.stderr
    assert os.lstat(path).st_ino == ino  # still the other process's socket
    other.close()


def test_the_engine_never_removes_a_pidfile_it_did_not_create(tmp_path: Path) -> None:
    from engine.__main__ import engine_argv

    pidfile = tmp_path / "vm.pid"
    pidfile.write_text("12345\n")  # another VM's
    argv = engine_argv(_engine_plan(tmp_path, pidfile=str(pidfile)))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "already exists" in res.stderr, res.stderr
    assert pidfile.read_text() == "12345\n"


def test_a_crashed_engines_pidfile_and_sockets_go_but_not_their_replacements(
    tmp_path: Path, env
) -> None:
    qmp, pidfile = tmp_path / "q.sock", tmp_path / "vm.pid"
    top = f'qmp = "{qmp}"\ndaemonize = true\npidfile = "{pidfile}"\n'
    vm = manifest(tmp_path, "a", GUEST, top=top, extra=socket_serial(tmp_path / "console.sock"))
    assert up(env, vm).returncode == 0
    pid = ps(env)["a"]["pid"]
    assert pidfile.read_text() == f"{pid}\n"
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    assert svl(env, "ps").returncode == 0  # cleans up after the dead engine
    assert not pidfile.exists() and not qmp.exists()
    assert up(env, vm).returncode == 0  # its stale pidfile no longer blocks the name
    pid = ps(env)["a"]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    pidfile.unlink()
    pidfile.write_text("not the engine's\n")  # the path reused by someone else since
    assert svl(env, "ps").returncode == 0
    assert pidfile.read_text() == "not the engine's\n"


# -- the runtime folder (findings 2 and 15) ------------------------------------------------------


def test_a_symlinked_runtime_entry_is_never_followed(tmp_path: Path, env) -> None:
    victim = tmp_path / "precious"
    victim.mkdir()
    for name in ("meta.json", "plan.json", "data"):
        (victim / name).write_text("keep me")
    (tmp_path / "rt").mkdir(mode=0o700)
    (tmp_path / "rt" / "vm").symlink_to(victim)
    for argv in (("ps",), ("down", "vm"), ("status", "vm"), ("up", "-d", "MANIFEST")):
        argv = tuple(str(manifest(tmp_path, "vm", GUEST)) if a == "MANIFEST" else a for a in argv)
        res = svl(env, *argv)
        assert res.returncode in (0, 1), res.stderr
        if argv[0] != "ps":
            assert "symlink" in res.stderr, (argv, res.stderr)
    assert sorted(p.name for p in victim.iterdir()) == ["data", "meta.json", "plan.json"]
    assert all((victim / n).read_text() == "keep me" for n in ("meta.json", "plan.json", "data"))


def test_a_file_at_the_runtime_entry_is_a_clear_error(tmp_path: Path, env) -> None:
    (tmp_path / "rt").mkdir(mode=0o700)
    (tmp_path / "rt" / "vm").write_text("not a folder")
    res = up(env, manifest(tmp_path, "vm", GUEST))
    assert res.returncode == 1
    assert f"{tmp_path / 'rt' / 'vm'} is not a folder" in res.stderr, res.stderr
    assert (tmp_path / "rt" / "vm").read_text() == "not a folder"


def test_a_runtime_root_that_is_not_a_folder_is_a_clear_error(tmp_path: Path, env) -> None:
    (tmp_path / "rt").write_text("x")
    res = up(env, manifest(tmp_path, "vm", GUEST))
    assert res.returncode == 1 and "runtime folder" in res.stderr, res.stderr


def test_clean_up_removes_only_what_svlaunch_recorded(tmp_path: Path, env) -> None:
    assert up(env, manifest(tmp_path, "a", GUEST)).returncode == 0
    folder = tmp_path / "rt" / "a"
    (folder / "notes.txt").write_text("a file svlaunch did not make")
    pid = ps(env)["a"]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    assert svl(env, "ps").returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (tmp_path / "rt" / "a.last.log").exists()  # the engine log is kept
    res = up(env, manifest(tmp_path, "a", GUEST))
    assert res.returncode == 1 and "'notes.txt'" in res.stderr, res.stderr
    assert (folder / "notes.txt").exists()


def test_every_file_and_socket_gets_an_explicit_mode_under_umask_000(tmp_path: Path, env) -> None:
    serial = tmp_path / "console.sock"
    top = f'daemonize = true\npidfile = "{tmp_path / "vm.pid"}"\n'
    vm = manifest(tmp_path, "a", GUEST, top=top, extra=socket_serial(serial))
    res = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "launcher.cli", "up",
         "-d", str(vm)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    modes = {p.name: stat.S_IMODE(os.lstat(p).st_mode) for p in (tmp_path / "rt" / "a").iterdir()}
    modes |= {p.name: stat.S_IMODE(os.lstat(p).st_mode) for p in (serial, tmp_path / "vm.pid")}
    modes["rt"] = stat.S_IMODE(os.lstat(tmp_path / "rt").st_mode)
    assert modes == {
        "rt": 0o700,
        "lock": 0o600,
        "record.json": 0o600,
        "plan.json": 0o600,
        "meta.json": 0o600,
        "exit.json": 0o600,
        "pid": 0o600,
        "engine.log": 0o640,
        "qmp.sock": 0o600,
        "console.sock": 0o600,
        "vm.pid": 0o644,
    }
    assert_answers(str(tmp_path / "rt" / "a" / "qmp.sock"), "a")
