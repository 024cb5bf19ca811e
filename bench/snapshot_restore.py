"""Restore latency on this host's KVM: restore request → guest running again, for 256 MiB and
2 GiB guests, through the engine pool and the exec path, next to a fresh boot (docs/snapshot.md).

The tiny guest writes a marker byte to COM1 in a tight loop, so a restored guest writes one with
its first instructions. The template VM (built in this process) runs a moment, its first 64 MiB
of RAM are filled with random bytes (so the memory file is not all holes), it is paused and
snapshotted (QMP ``migrate``'s path). Each run then starts an engine from a plan whose
``incoming`` names that snapshot, with COM1 on a pipe: the clock starts before the request (the
pool) or the spawn (exec) and stops when the marker arrives; the engine is then killed. A row
for each size; variants interleaved, N times each; min and median printed, and the phases of
the first pool row (``$SVLAUNCH_STARTUP_TRACE``, from the request).

    python bench/snapshot_restore.py [N]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from bench.engine_startup import fmt  # noqa: E402
from bench.pool_startup import (  # noqa: E402
    QUIET,
    PoolSamples,
    become_subreaper,
    machine,
    start_pool,
)

MARK = b"\x06"
MiB = 1 << 20
SIZES = {"256 MiB": 256 * MiB, "2 GiB": 2048 * MiB}
FILLED = 64 * MiB


def marker_loop() -> bytes:
    """``mov dx, 0x3f8; mov al, MARK; 1: out dx, al; jmp 1b``."""
    return b"\x66\xba\xf8\x03" + b"\xb0" + MARK + b"\xee\xeb\xfd"


def template(tmp: Path, size: int) -> tuple[Path, int]:
    """A snapshot of the marker guest with ``size`` bytes of RAM: (plan file, bytes on disk)."""
    from tiny_guest import make_plan, write_guest

    from engine.vm import Vm

    kernel = write_guest(tmp, marker_loop(), f"g{size >> 20}.elf")
    plan = make_plan(kernel, memory=size, serial_file=tmp / f"t{size >> 20}.serial")
    vm = Vm(plan)
    vm.start()
    folder = tmp / f"snap{size >> 20}"
    try:
        time.sleep(0.2)
        vm.pause()
        vm.machine.mem.write(16 * MiB, os.urandom(FILLED))  # RAM a guest has used
        vm.migrate(f"file:{folder}")
        while vm.query_migrate()["status"] == "active":
            vm.wait(0.02)
        assert vm.query_migrate()["status"] == "completed", vm.query_migrate()
    finally:
        vm.close()
    restore = make_plan(kernel, memory=size, serial_backend="stdio")
    restore = dataclasses.replace(restore, incoming=f"file:{folder}")
    path = tmp / f"restore{size >> 20}.json"
    path.write_text(restore.dumps())
    return path, os.stat(folder / "memory").st_blocks * 512


def _read_until_mark(r: int, what: str) -> bytes:
    out = b""
    while MARK not in out:
        chunk = os.read(r, 65536)
        if not chunk:
            raise SystemExit(f"{what}: the engine ended before the guest ran: {out[-800:]!r}")
        out += chunk
    return out


def _phases(s: PoolSamples, out: bytes) -> None:
    for line in out.decode(errors="replace").splitlines():
        at = line.find("startup-trace ")
        if at >= 0:
            ms, _, phase = line[at + len("startup-trace ") :].strip().partition(" ms  ")
            s.phases.setdefault(phase, []).append(float(ms))


def pool_once(s: PoolSamples, sock: str) -> None:
    from engine.pool import client

    r, w = os.pipe()
    options = client.client_options()
    t0 = time.perf_counter()
    options["env"]["SVLAUNCH_STARTUP_TRACE"] = repr(time.monotonic())
    started = client.start(sock, s.plan, {"log": w}, options)
    s.reply.append((time.perf_counter() - t0) * 1000)
    os.close(w)
    out = _read_until_mark(r, s.name)
    s.first.append((time.perf_counter() - t0) * 1000)
    os.kill(started.pid, signal.SIGTERM)  # the engine's quit path prints the trace
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(started.pid, 0)
    os.close(started.pidfd)
    _phases(s, out)


def exec_once(s: PoolSamples) -> None:
    from engine.__main__ import engine_argv

    argv = engine_argv(s.plan)
    r, w = os.pipe()
    ir, iw = os.pipe()
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
        (os.POSIX_SPAWN_DUP2, ir, 0), (os.POSIX_SPAWN_DUP2, w, 1),
        (os.POSIX_SPAWN_CLOSE, r), (os.POSIX_SPAWN_CLOSE, iw)])  # fmt: skip
    os.close(w)
    os.close(ir)
    _read_until_mark(r, s.name)
    s.first.append((time.perf_counter() - t0) * 1000)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(iw)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="svbench-restore-"))
    rows: list[tuple[str, PoolSamples, str]] = []
    plans, disk = {}, {}
    for label, size in SIZES.items():
        plans[label], disk[label] = template(tmp, size)
    boot = tmp / "boot.json"
    from tiny_guest import make_plan, write_guest

    boot.write_text(make_plan(write_guest(tmp, marker_loop(), "boot.elf"), memory=256 * MiB,
                              serial_backend="stdio").dumps())  # fmt: skip
    pool, sock = start_pool(tmp)
    for label in SIZES:
        rows.append(("pool", PoolSamples(f"pool: restore {label}", str(plans[label])), label))
    for label in SIZES:
        rows.append(("exec", PoolSamples(f"exec: restore {label}", str(plans[label])), label))
    rows.append(("pool", PoolSamples("pool: fresh boot 256 MiB", str(boot)), ""))
    try:
        with open(os.devnull, "w") as null:
            saved = os.dup(2)
            os.dup2(null.fileno(), 2)  # the exec'd engines' PVM notice
            try:
                for _ in range(n):
                    for how, s, _ in rows:
                        if how == "pool":
                            time.sleep(QUIET)  # a warmed spare is ready, as between two `up`s
                            pool_once(s, sock)
                        else:
                            exec_once(s)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
    finally:
        pool.terminate()
        pool.wait(30)
    print(machine())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"N={n}, load average {load}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"{'':<34} request -> guest runs (ms)   memory file")
    print(f"{'':<34} {'min':>6}   {'median':>6}")
    for _, s, label in rows:
        on_disk = f"{disk[label] >> 20} MiB on disk" if label else "(no snapshot)"
        print(f"{s.name:<34} {fmt(s.first)}     {on_disk}")
    first = rows[0][1]
    print(f"\nphases, pool restore {next(iter(SIZES))} (request -> mark, ms; N={n}):  min   median")
    for phase, values in first.phases.items():
        print(f"  {phase:<46} {min(values):6.1f}   {statistics.median(values):6.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    print("goal: restore request -> guest running again <= 10 ms (this host's KVM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
