"""QMP round-trip latency: `query-status` over a unix socket, our server vs QEMU's, same host.

Each side runs in its own process; the client is a bare blocking socket (send one line, read one
line) so the numbers are the servers', not a client library's. Our server throttles at 100
commands/s per connection (StratoVirt's leaky bucket), so the client opens a fresh, negotiated
connection every 90 commands; connection set-up is not timed. Goal: p99 <= 1 ms.

    python bench/qmp_latency.py [--samples N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_CONNECTION = 90

OUR_SERVER = textwrap.dedent(
    """
    import sys, time
    from engine.qmp.control import MachineInfo, RunState
    from engine.qmp.server import QmpServer

    class Idle:  # the smallest VmControl: query-status is all this benchmark asks
        def info(self): return MachineInfo("bench")
        def status(self): return RunState.PAUSED

    srv = QmpServer(Idle(), [sys.argv[1]])
    srv.start()
    print("ready", flush=True)
    sys.stdin.read()
    srv.close()
    """
)


def _readline(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            return line
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk


def _session(path: str) -> tuple[socket.socket, bytearray]:
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    buf = bytearray()
    _readline(s, buf)  # greeting
    s.sendall(b'{"execute":"qmp_capabilities"}\n')
    _readline(s, buf)
    return s, buf


def measure(path: str, samples: int) -> list[float]:
    """Round-trip times in microseconds."""
    out: list[float] = []
    request = b'{"execute":"query-status"}\n'
    while len(out) < samples:
        s, buf = _session(path)
        try:
            for _ in range(min(PER_CONNECTION, samples - len(out))):
                t0 = time.perf_counter_ns()
                s.sendall(request)
                reply = _readline(s, buf)
                out.append((time.perf_counter_ns() - t0) / 1000)
                if b'"return"' not in reply:
                    raise RuntimeError(f"unexpected reply: {reply!r}")
        finally:
            s.close()
        time.sleep(0.01)
    return out


def report(label: str, us: list[float]) -> None:
    us = sorted(us)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    verdict = "ok" if p99 <= 1000 else "over the 1 ms goal"
    print(
        f"{label:<28} n={len(us):<6} median {statistics.median(us):8.1f} us   "
        f"p99 {p99:8.1f} us   max {us[-1]:8.1f} us   ({verdict})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=5000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="svl-qmp-bench-"))
    rc = 0
    try:
        ours = str(tmp / "ours.sock")
        proc = subprocess.Popen(
            [sys.executable, "-c", OUR_SERVER, ours],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        try:
            measure(ours, 200)  # warm-up
            report("svlaunch engine QMP server", measure(ours, args.samples))
        finally:
            proc.communicate(b"", timeout=10)

        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            print("QEMU: qemu-system-x86_64 not installed, skipped")
        else:
            qsock = str(tmp / "qemu.sock")
            qp = subprocess.Popen(
                [
                    qemu,
                    "-machine",
                    "none",
                    "-S",
                    "-display",
                    "none",
                    "-nodefaults",
                    "-qmp",
                    f"unix:{qsock},server,nowait",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                measure(qsock, 200)
                report("QEMU (-machine none) QMP", measure(qsock, args.samples))
            finally:
                qp.kill()
                qp.wait()
    except Exception as exc:
        print(f"qmp_latency: {exc}", file=sys.stderr)
        rc = 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
