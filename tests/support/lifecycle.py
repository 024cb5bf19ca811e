"""Helpers for the lifecycle tests: tiny-guest manifests, the real CLI in a subprocess, an
impostor QMP server, and the "engine still answers" check the hostile suites run after a case."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"

# The engine's syscall filter is on, as in real use; SVLAUNCH_TEST_SECCOMP=false isolates a
# filter problem from a lifecycle problem when diagnosing.
SECCOMP = os.environ.get("SVLAUNCH_TEST_SECCOMP", "true")


def manifest(tmp: Path, name: str, code: bytes, extra: str = "", top: str = "") -> Path:
    """A microvm manifest booting the tiny guest ``code``; ``top`` goes before the first table
    (qmp = ..., pidfile = ...), ``extra`` after the last one."""
    from tiny_guest import write_guest

    kernel = write_guest(tmp, code, f"{name}.elf")
    initrd = tmp / "initrd.img"
    initrd.write_bytes(b"\0" * 4096)
    path = tmp / f"{name}.toml"
    serial = "" if "[serial]" in extra else 'serial = "stdio"\n'
    path.write_text(
        f'name = "{name}"\n{serial}seccomp = {SECCOMP}\n{top}'
        '[machine]\ntype = "microvm"\n[cpu]\ncpus = 1\n'
        f'[memory]\nsize = "128M"\n[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\n'
        f'cmdline = "console=ttyS0"\n{extra}'
    )
    return path


def svl(env: dict[str, str], *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """The real CLI; no user input may ever produce a traceback."""
    res = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


IMPOSTOR = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {support!r})
    from fakevm import FakeVm
    from engine.qmp.server import QmpServer
    vm = FakeVm(sys.argv[1])
    srv = QmpServer(vm, [sys.argv[2]]); vm.sink = srv; srv.start()
    print("ready", flush=True)
    while not vm.quit_called.is_set():
        time.sleep(0.02)
    srv.close()
    """
).format(support=str(SUPPORT))


def start_impostor(name: str, path: str) -> subprocess.Popen[bytes]:
    """A process that is no VM of svlaunch's serving QMP at ``path`` as VM ``name``; it exits
    if it is ever sent ``quit`` (the tests assert that it never is)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", IMPOSTOR, name, path], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def assert_answers(qmp: str, name: str, within: float = 0.1) -> None:
    """A fresh QMP connection to the engine at ``qmp`` gets ``query-status`` answered in time
    (after a hostile case, the engine is still fine), by the VM ``name``."""
    from launcher.qmpclient import QmpClient

    t0 = time.monotonic()
    with QmpClient.connect(qmp, timeout=2.0) as c:
        c.execute("query-status")
        took = time.monotonic() - t0
        assert c.execute("query-name") == {"name": name}
    assert took < within, f"query-status took {took * 1000:.0f} ms"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """``pid`` exited (or is a zombie nobody reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
