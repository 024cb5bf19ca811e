"""The engine pool on host KVM: VMs forked by the pool run, answer QMP and stop like exec'd ones;
they share nothing with each other or the pool; they survive the pool; bad requests are refused
while the pool keeps serving. Guests are the tests' tiny ones (tests/support/tiny_guest.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from poolutil import (
    ROOT,
    manifest,
    namespaces,
    open_fds,
    plan_file,
    pool_env,
    raw_request,
    shared_descriptions,
    start_pool,
    stat_field,
    status_fields,
    stop_everything,
    svl,
    wait_gone,
)
from tiny_guest import HANG, hello_poweroff, say

from engine.pool import client

pytestmark = pytest.mark.kvm


@pytest.fixture
def env(tmp_path: Path):
    env = pool_env(tmp_path)
    yield env
    stop_everything(env)


def _ps(env) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(svl(env, "ps", "--json").stdout)}


def _up(env, path: Path, *flags: str) -> None:
    res = svl(env, "up", "-d", *flags, str(path))
    assert res.returncode == 0, res.stderr
    assert "pool refused" not in res.stderr


def test_a_vm_started_through_the_pool_runs_answers_qmp_and_goes_down(tmp_path, env) -> None:
    pool = start_pool(env)
    _up(env, manifest(tmp_path, "tiny", say(b"hi from the pool\n") + HANG), "--paused")
    row = _ps(env)["tiny"]
    pid = row["pid"]
    assert row["state"] == "prelaunch"
    # forked by the pool, yet not its child: own session, parent is not the pool
    assert stat_field(pid, 4) != pool and stat_field(pid, 6) not in (pool, os.getsid(pool))
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "sv-tiny"
    # and the command line the exec path would show (ps, identity checks look for --plan)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    plan = str(tmp_path / "rt" / "tiny" / "plan.json").encode()
    assert argv[1:6] == [b"-m", b"engine", b"run", b"--plan", plan]
    served = json.loads(svl(env, "pool", "status", "--json").stdout)["served"]
    assert served >= 2  # the status call of start_pool, and this VM

    serial = socket.socket(socket.AF_UNIX)
    serial.connect(row["serial"])
    serial.settimeout(20)
    assert svl(env, "qmp", "tiny", "cont").returncode == 0
    got = b""
    while b"hi from the pool" not in got:
        chunk = serial.recv(4096)
        assert chunk, got
        got += chunk
    serial.close()
    assert _ps(env)["tiny"]["state"] == "running"
    down = svl(env, "down", "tiny", "--timeout", "1")
    assert down.returncode == 0, down.stderr
    assert wait_gone(pid)
    assert _ps(env) == {}


def test_foreground_up_through_the_pool_relays_the_console_and_the_exit(tmp_path, env) -> None:
    start_pool(env)
    res = svl(env, "up", str(manifest(tmp_path, "fg", hello_poweroff(b"bye from fg\n"))), input="")
    assert res.returncode == 0, res.stderr
    assert "bye from fg" in res.stdout
    assert json.loads(svl(env, "pool", "status", "--json").stdout)["served"] >= 2
    assert not (tmp_path / "rt" / "fg").exists()


def test_the_engine_records_its_end_and_imported_nothing_after_the_fork(tmp_path, env) -> None:
    """Every QMP command runs code the engine loads lazily; a jail would hide its files."""
    start_pool(env)
    _up(env, manifest(tmp_path, "rec", say(b"x") + HANG))
    pid = _ps(env)["rec"]["pid"]
    for cmd in ("query-status", "query-cpus-fast", "query-version", "stop", "cont",
                "query-commands", "query-hotpluggable-cpus", "query-events"):  # fmt: skip
        svl(env, "qmp", "rec", cmd)
    assert svl(env, "qmp", "rec", "quit").returncode == 0
    assert wait_gone(pid)
    rec = json.loads((tmp_path / "rt" / "rec" / "exit.json").read_text())
    assert (rec["code"], rec["cause"], rec["guest"]) == (0, "host-qmp-quit", False)
    assert rec["late_imports"] == []


def test_two_forked_engines_share_no_descriptor_with_each_other_or_the_pool(tmp_path, env) -> None:
    pool = start_pool(env)
    _up(env, manifest(tmp_path, "one", HANG))
    _up(env, manifest(tmp_path, "two", HANG))
    rows = _ps(env)
    a, b = rows["one"]["pid"], rows["two"]["pid"]
    assert shared_descriptions(a, b) == []
    assert shared_descriptions(a, pool) == [] and shared_descriptions(b, pool) == []
    listening = {os.readlink(f"/proc/{pool}/fd/{fd}") for fd in open_fds(pool)}
    for pid in (a, b):
        st = status_fields(pid)
        assert st["SigBlk"] == "0000000000000000"
        assert st["Seccomp"] == "2"  # the manifest's seccomp = true, as on the exec path
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in open_fds(pid)}
        sockets = {t for t in targets if t.startswith("socket:")}
        assert not sockets & {t for t in listening if t.startswith("socket:")}
        own = str(tmp_path / "rt" / ("one" if pid == a else "two"))
        other = str(tmp_path / "rt" / ("two" if pid == a else "one"))
        assert any(t.startswith(own) for t in targets)
        assert not any(t.startswith(other) for t in targets)
    assert stat_field(a, 6) != stat_field(b, 6)  # separate sessions
    assert namespaces(a) == namespaces(pool)  # no sandbox in these manifests: the host's


def test_running_vms_survive_a_restart_of_the_pool(tmp_path, env) -> None:
    first = start_pool(env)
    _up(env, manifest(tmp_path, "keep", HANG))
    pid = _ps(env)["keep"]["pid"]
    stop = svl(env, "pool", "stop")
    assert stop.returncode == 0 and "keep running" in stop.stdout
    assert wait_gone(first)
    assert svl(env, "pool", "status").returncode == 1
    assert _ps(env)["keep"]["state"] == "running"
    second = start_pool(env)
    assert second != first
    _up(env, manifest(tmp_path, "next", HANG))
    assert set(_ps(env)) == {"keep", "next"}
    assert svl(env, "down", "keep", "--force", "--timeout", "1").returncode == 0
    assert wait_gone(pid)
    assert set(_ps(env)) == {"next"}


def test_up_without_a_pool_execs_the_engine_and_starts_a_pool_for_next_time(tmp_path, env) -> None:
    _up(env, manifest(tmp_path, "first", HANG))
    pid = _ps(env)["first"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--plan" in cmdline  # exec'd as before
    deadline = time.monotonic() + 60
    while svl(env, "pool", "status").returncode != 0:
        assert time.monotonic() < deadline, (tmp_path / "rt" / ".pool.log").read_text()
        time.sleep(0.2)
    _up(env, manifest(tmp_path, "second", HANG))
    second = _ps(env)["second"]["pid"]
    assert Path(f"/proc/{second}/comm").read_text().strip() == "sv-second"  # forked, not exec'd
    assert Path(f"/proc/{pid}/comm").read_text().strip() != "sv-first"


def test_svlaunch_pool_off_neither_uses_nor_starts_a_pool(tmp_path) -> None:
    env = {**pool_env(tmp_path), "SVLAUNCH_POOL": "off"}
    try:
        _up(env, manifest(tmp_path, "plain", HANG))
        time.sleep(0.5)
        assert not (tmp_path / "rt" / ".pool.lock").exists()
        assert svl(env, "pool", "status").returncode == 1
    finally:
        stop_everything(env)


def _start_msg(plan: Path, fds: list[str]) -> bytes:
    return json.dumps({"v": 1, "op": "start", "plan": str(plan), "fds": fds}).encode()


def test_bad_requests_get_an_error_reply_and_the_pool_keeps_serving(tmp_path, env) -> None:
    start_pool(env)
    sock = str(tmp_path / "rt" / ".pool.sock")
    plan = plan_file(tmp_path, HANG)
    (tmp_path / "notaplan.json").write_text('{"hello": 1}')
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    ro = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o600)
    folder = os.open(tmp_path, os.O_RDONLY)

    def start(plan_path: str, fds: dict[str, int] | None = None, **extra) -> dict:
        fds = {"log": log} if fds is None else fds
        msg = {"v": 1, "op": "start", "plan": plan_path, "fds": list(fds), **extra}
        return raw_request(sock, json.dumps(msg).encode(), tuple(fds.values()))

    cases = {
        "garbage": raw_request(sock, b"\x00\xffnot json at all"),
        "list": raw_request(sock, b"[1, 2]"),
        "version": raw_request(sock, b'{"v": 99, "op": "status"}'),
        "op": raw_request(sock, b'{"v": 1, "op": "format-disk"}'),
        "huge": raw_request(sock, b'{"v": 1, "op": "status", "x": "' + b"a" * 70000 + b'"}'),
        "relative": start("plan.json"),
        "missing": start(str(tmp_path / "nope.json")),
        "not a plan": start(str(tmp_path / "notaplan.json")),
        "count": raw_request(sock, _start_msg(plan, ["log", "exit"]), (log,)),
        "dir as log": start(str(plan), {"log": folder}),
        "read-only exit": start(str(plan), {"log": log, "exit": ro}),
        "unknown fd": raw_request(sock, _start_msg(plan, ["stdin"]), (log,)),
        "option": start(str(plan), options={"no-such": True}),
        "incoming": start(str(plan), options={"incoming": "tcp:10.0.0.1:4444"}),
        "env": start(str(plan), options={"env": {"LD_PRELOAD": "/evil.so"}}),
        "engine": start(str(plan), engine="/somewhere/else/engine"),
    }
    want = {"garbage": "bad-json", "list": "bad-request", "version": "bad-version", "op": "bad-op",
            "huge": "too-large", "relative": "bad-plan", "missing": "bad-plan",
            "not a plan": "bad-plan", "count": "bad-fds", "dir as log": "bad-fds",
            "read-only exit": "bad-fds", "unknown fd": "bad-fds", "option": "bad-option", "incoming": "bad-option",
            "env": "bad-option", "engine": "wrong-engine"}  # fmt: skip
    assert {k: (v["ok"], v["error"]) for k, v in cases.items()} == {
        k: (False, code) for k, code in want.items()
    }
    assert all(v["message"] and "Traceback" not in v["message"] for v in cases.values())

    # a client that connects and says nothing stalls nobody
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.connect(sock)
    st = json.loads(svl(env, "pool", "status", "--json").stdout)
    assert st["refused"] == len(cases)
    silent.close()

    # and a good request still starts a VM
    good = plan_file(tmp_path, say(b"served\n") + HANG, name="good")
    started = client.start(sock, str(good), {"log": log}, client.client_options())
    try:
        deadline = time.monotonic() + 60  # generous: CI's 2 cores are shared
        while b"served" not in (tmp_path / "log").read_bytes():
            why = (
                f"log: {(tmp_path / 'log').read_bytes()[-500:]!r}; pool log: "
                + (tmp_path / "rt" / ".pool.log").read_text()[-1000:]
            )
            assert time.monotonic() < deadline, why
            assert not wait_gone(started.pid, 0), why
            time.sleep(0.05)
    finally:
        signal.pidfd_send_signal(started.pidfd, signal.SIGKILL)
        os.close(started.pidfd)
    for fd in (log, ro, folder):
        os.close(fd)


def test_the_pool_takes_its_socket_from_systemd(tmp_path) -> None:
    """Socket activation: LISTEN_PID/LISTEN_FDS and the socket as fd 3, as systemd passes it."""
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(8)
    fd = listener.fileno()
    serve = [sys.executable, "-m", "engine.pool", "serve", "--lock", str(tmp_path / "lock")]
    # what systemd does between fork and exec: the socket on fd 3, LISTEN_PID = the pid
    wrapper = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
               "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
               f"os.execv(sys.executable, {serve!r})")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", wrapper], cwd=ROOT, pass_fds=(fd,),
                            stderr=subprocess.PIPE)  # fmt: skip
    listener.close()
    try:
        reply, _ = client.call(str(path), {"op": "status"}, reply_timeout=60)
        assert reply["activated"] is True and reply["socket"] is None
        # a second pool on the same lock refuses to serve
        again = subprocess.run([sys.executable, "-m", "engine.pool", "serve", "--socket",
                                str(tmp_path / "other.sock"), "--lock", str(tmp_path / "lock")],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert again.returncode == 1 and "another pool holds" in again.stderr
        client.call(str(path), {"op": "stop"})
        assert proc.wait(30) == 0
        assert path.exists()  # the socket is systemd's: the pool leaves it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
