"""The engine pool as root: sandboxed VMs forked by the pool are as isolated as exec'd ones
(their own namespaces, cgroups, seccomp, uid, descriptors), run the engine inside the jail
without a new interpreter, and report how they ended; a peer of another uid is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ozone_plans import UID
from poolutil import ROOT, namespaces, shared_descriptions, status_fields, wait_gone
from tiny_guest import HANG, make_plan, say, write_guest

from engine.ozone.sandbox import teardown_named
from engine.plan import HostFile, SandboxPlan
from engine.pool import client

pytestmark = [pytest.mark.root, pytest.mark.kvm]


def _serve(folder: Path) -> tuple[subprocess.Popen, str]:
    sock = str(folder / "pool.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.pool", "serve", "--socket", sock, "--lock",
         str(folder / "pool.lock")], cwd=ROOT, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    return proc, sock


@pytest.fixture
def pool(tmp_path):
    proc, sock = _serve(tmp_path)
    yield proc, sock
    proc.terminate()
    proc.wait(30)


def _sandboxed_plan(tmp: Path, name: str, code: bytes) -> tuple[Path, Path]:
    run = tmp / f"{name}-run"
    run.mkdir()
    os.chown(run, UID, UID)
    serial = run / "serial"
    plan = make_plan(write_guest(tmp, code, f"{name}.elf"), serial_file=serial)
    sb = SandboxPlan(name=name, exec_file="/usr/bin/stratovirt", uid=UID, gid=UID,
                     root=str(tmp / "srv"), cgroup=(("memory.limit_in_bytes", "1G"),))  # fmt: skip
    files = (HostFile(plan.boot.kernel, "kernel"), HostFile(str(serial), "chardev", True))
    plan = dataclasses.replace(plan, name=name, sandbox=sb, host_files=files, seccomp=True)
    path = tmp / f"{name}.plan.json"
    path.write_text(plan.dumps())
    return path, serial


class _Vm:
    def __init__(self, tmp: Path, sock: str, name: str, code: bytes, env: dict | None = None):
        self.name, self.tmp = name, tmp
        plan, self.serial = _sandboxed_plan(tmp, name, code)
        self.log = os.open(tmp / f"{name}.log", os.O_WRONLY | os.O_CREAT, 0o600)
        self.exit_path = tmp / f"{name}.exit.json"
        self.exit_fd = os.open(self.exit_path, os.O_WRONLY | os.O_CREAT, 0o600)
        opts = client.client_options(name=name)
        opts["env"].update(env or {})
        started = client.start(sock, str(plan), {"log": self.log, "exit": self.exit_fd}, opts)
        self.supervisor, self.pidfd = started.pid, started.pidfd

    def engine(self, timeout: float = 60) -> int:
        """The jailed engine: the supervisor's child (pid 1 of its own PID namespace)."""
        deadline = time.monotonic() + timeout
        while True:
            kids = Path(f"/proc/{self.supervisor}/task/{self.supervisor}/children").read_text()
            if kids.split():
                return int(kids.split()[0])
            assert time.monotonic() < deadline, (self.tmp / f"{self.name}.log").read_text()
            time.sleep(0.02)

    def wait_serial(self, text: bytes) -> None:
        deadline = time.monotonic() + 60
        while not (self.serial.exists() and text in self.serial.read_bytes()):
            assert time.monotonic() < deadline, (self.tmp / f"{self.name}.log").read_text()
            time.sleep(0.05)

    def ended(self) -> dict:
        assert wait_gone(self.supervisor, 60), (self.tmp / f"{self.name}.log").read_text()
        return json.loads(self.exit_path.read_text())

    def close(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(self.supervisor)
        for fd in (self.pidfd, self.log, self.exit_fd):
            os.close(fd)
        try:
            teardown_named(self.name, "stratovirt")
        except Exception:
            pass


def test_sandboxed_vms_from_the_pool_are_isolated_like_exec_ones(tmp_path, pool) -> None:
    proc, sock = pool
    vms = [_Vm(tmp_path, sock, n, say(f"{n} jailed\n".encode()) + HANG) for n in ("pa", "pb")]
    try:
        engines = [vm.engine() for vm in vms]
        for vm in vms:
            vm.wait_serial(f"{vm.name} jailed".encode())
        a, b = engines
        ns_a, ns_b, ns_pool = namespaces(a), namespaces(b), namespaces(proc.pid)
        for ns in ("mnt", "uts", "ipc", "pid"):
            assert len({ns_a[ns], ns_b[ns], ns_pool[ns]}) == 3, ns
        for vm, pid in zip(vms, engines, strict=True):
            st = status_fields(pid)
            assert st["Seccomp"] == "2"
            assert st["Uid"].split()[:2] == [str(UID), str(UID)]
            assert st["SigBlk"] == "0000000000000000"
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            assert f"/stratovirt/{vm.name}" in cgroups
            # the engine runs in the forked process itself: no interpreter was exec'd in the
            # jail (exec would have renamed it), yet it shows the exec path's command line
            assert Path(f"/proc/{pid}/comm").read_text().strip() == f"sv-{vm.name}"
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert argv[1:7] == [b"-B", b"-m", b"engine", b"run", b"--plan", b"/plan.json"]
        for vm in vms:
            argv = Path(f"/proc/{vm.supervisor}/cmdline").read_bytes().split(b"\0")
            assert argv[1:5] == [b"-m", b"engine.ozone", b"run", b"--plan"]
        assert shared_descriptions(a, b) == []
        for pid in (a, b, vms[0].supervisor, vms[1].supervisor):
            assert shared_descriptions(pid, proc.pid) == []
        assert shared_descriptions(vms[0].supervisor, vms[1].supervisor) == []

        signal.pidfd_send_signal(vms[0].pidfd, signal.SIGTERM)  # the supervisor forwards it
        rec = vms[0].ended()
        # the jailed engine's own record, through its supervisor
        assert (rec["code"], rec["cause"], rec["reason"]) == (0, "host-signal", "SIGTERM received")
        assert not os.path.exists(tmp_path / "srv" / "stratovirt" / "pa")  # torn down
        assert not wait_gone(vms[1].supervisor, 0.2)  # the other VM is untouched
    finally:
        for vm in vms:
            vm.close()


def test_a_seccomp_kill_of_a_pool_engine_is_recorded_by_its_supervisor(tmp_path, pool) -> None:
    _, sock = pool
    vm = _Vm(tmp_path, sock, "pk", say(b"x") + HANG, {"SVLAUNCH_TEST_FORBIDDEN_SYSCALL": "1"})
    try:
        rec = vm.ended()
        assert rec["signal"] == signal.SIGSYS and rec["code"] == 128 + signal.SIGSYS
        assert rec["reason"].startswith("killed by seccomp (SIGSYS)")
    finally:
        vm.close()


def test_a_peer_of_another_uid_is_refused_and_the_pool_serves_on() -> None:
    folder = Path(tempfile.mkdtemp(prefix="svpool-"))
    folder.chmod(0o755)
    proc, sock = _serve(folder)
    try:
        os.chmod(sock, 0o666)  # only so that the other uid can connect and meet SO_PEERCRED
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(sock)
                s.send(b'{"v": 1, "op": "stop"}')
                os.write(w, s.recv(65536))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            reply = json.loads(f.read())
        os.waitpid(pid, 0)
        assert reply["ok"] is False and reply["error"] == "refused"
        assert "uid 65534" in reply["message"]
        status, _ = client.call(sock, {"op": "status"})
        assert status["refused"] == 1 and proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
