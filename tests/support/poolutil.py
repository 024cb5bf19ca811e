"""Helpers for the engine pool's tests: the svlaunch CLI with a pool, tiny-guest manifests and
plans, raw requests, and what /proc says about a process (namespaces, fds, session)."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tiny_guest import make_plan, write_guest

ROOT = Path(__file__).resolve().parents[2]
KCMP_FILE = 0
_SYS_KCMP = 312  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


def svl(env: dict[str, str], *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)  # fmt: skip


def pool_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp / "rt"), "SVLAUNCH_POOL": "on"}


def start_pool(env: dict[str, str]) -> int:
    res = svl(env, "pool", "start")
    assert res.returncode == 0, res.stderr
    return int(json.loads(svl(env, "pool", "status", "--json").stdout)["pid"])


def stop_everything(env: dict[str, str]) -> None:
    """Test clean-up: every VM of the runtime folder down, the pool stopped."""
    res = svl(env, "ps", "--json")
    for row in json.loads(res.stdout or "[]"):
        svl(env, "down", row["name"], "--force", "--timeout", "1")
    svl(env, "pool", "stop")


def manifest(tmp: Path, name: str, code: bytes, *, seccomp: bool = True) -> Path:
    kernel = write_guest(tmp, code, f"{name}.elf")
    initrd = tmp / "initrd.img"
    initrd.write_bytes(b"\0" * 4096)
    path = tmp / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nserial = "stdio"\nseccomp = {str(seccomp).lower()}\n'
        '[machine]\ntype = "microvm"\n[cpu]\ncpus = 1\n[memory]\nsize = "128M"\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "console=ttyS0"\n'
    )
    return path


def plan_file(tmp: Path, code: bytes, name: str = "tiny", **kw) -> Path:
    """A tiny guest's plan with its serial on the engine's stdout (the ``log`` descriptor)."""
    import dataclasses

    plan = make_plan(write_guest(tmp, code, f"{name}.elf"), serial_backend="stdio", **kw)
    path = tmp / f"{name}.plan.json"
    path.write_text(dataclasses.replace(plan, name=name).dumps())
    return path


def raw_request(path: str, data: bytes, fds: tuple[int, ...] = ()) -> dict:
    """Send bytes as they are (not necessarily JSON) and return the pool's reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    sock.connect(path)
    try:
        anc = [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, "little") for fd in fds))
        ]
        sock.sendmsg([data], anc if fds else [])
        reply, anc_in, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
        for _, _, payload in anc_in:
            for i in range(0, len(payload) - 3, 4):
                os.close(int.from_bytes(payload[i : i + 4], "little"))
        return json.loads(reply)
    finally:
        sock.close()


def wait_gone(pid: int, timeout: float = 10) -> bool:
    """The process exited (a zombie counts: nobody here reaps a pool-forked engine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in "ZX":
            return True
        time.sleep(0.05)
    return False


def stat_field(pid: int, index: int) -> int:
    """Field ``index`` (1-based as in proc(5)) of /proc/pid/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[index - 3])


def open_fds(pid: int) -> list[int]:
    return sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))


def same_open_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """kcmp(2): do the two descriptors refer to one open file description?"""
    return _libc.syscall(_SYS_KCMP, pid1, pid2, KCMP_FILE, fd1, fd2) == 0


def shared_descriptions(pid1: int, pid2: int) -> list[tuple[int, int, str]]:
    """Descriptor pairs of two processes that are one open file (what a leak looks like)."""
    out = []
    for a in open_fds(pid1):
        for b in open_fds(pid2):
            if same_open_file(pid1, a, pid2, b):
                out.append((a, b, os.readlink(f"/proc/{pid1}/fd/{a}")))
    return out


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def namespaces(pid: int) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("mnt", "uts", "ipc", "pid", "net")}
