"""Restore latency on this host's KVM: restore request → guest running again, for 256 MiB and
2 GiB guests, through the engine pool and the exec path, next to a fresh boot (docs/snapshot.md).

The tiny guest spins until a flag in its RAM is set, then writes a marker byte to COM1 and powers
off, so a restored guest writes the marker with its first instructions and then ends. The template VM
(built in this process) runs a moment and is paused; its first 64 MiB of RAM are filled with
random bytes (so the memory file is not all holes) and the flag is set; it is snapshotted (QMP
``migrate``'s path). Each run then starts an engine from a plan whose ``incoming`` names that
snapshot, with COM1 on a pipe, exactly as ``bench/pool_startup.py`` starts a boot (its request
and its exec path, reused): the clock starts before the request (the pool) or the spawn (exec)
and stops when the marker arrives. A row for each size; variants interleaved, N times each; min
and median printed, and the phases of the first pool row (``$SVLAUNCH_STARTUP_TRACE``).

    python bench/snapshot_restore.py [N]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from bench._result import result  # noqa: E402
from bench.engine_startup import Samples, fmt, run_once  # noqa: E402
from bench.pool_startup import (  # noqa: E402
    QUIET,
    PoolSamples,
    become_subreaper,
    machine,
    run_pool_once,
    start_pool,
)

MARK = b"\x06"
MiB = 1 << 20
SIZES = {"256 MiB": 256 * MiB, "2 GiB": 2048 * MiB}
FILLED = 64 * MiB
FLAG = 0x200000  # a guest-physical byte the template sets before its snapshot


def marker_loop() -> bytes:
    """``1: cmp byte [FLAG], 0; je 1b``, then the marker on COM1 and power off: a restored
    guest whose flag the template set writes the marker with its first instructions."""
    from tiny_guest import poweroff, say

    check = b"\x80\x3c\x25" + FLAG.to_bytes(4, "little") + b"\x00"  # cmp byte [abs32], 0
    return check + b"\x74" + bytes([256 - len(check) - 2]) + say(MARK) + poweroff()


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
        vm.machine.mem.write(FLAG, b"\x01")  # a restored guest powers off after its marker
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


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="svbench-restore-"))
    from engine.__main__ import engine_argv

    rows: list[tuple[str, PoolSamples, str]] = []
    plans, disk = {}, {}
    for label, size in SIZES.items():
        plans[label], disk[label] = template(tmp, size)
    boot = tmp / "boot.json"
    from tiny_guest import make_plan, poweroff, say, write_guest

    kernel = write_guest(tmp, say(MARK) + poweroff(), "boot.elf")  # no flag to wait for
    boot.write_text(make_plan(kernel, memory=256 * MiB, serial_backend="stdio").dumps())
    pool, sock = start_pool(tmp)
    for label in SIZES:
        rows.append(("pool", PoolSamples(f"pool: restore {label}", str(plans[label])), label))
    for label in SIZES:
        rows.append(("exec", PoolSamples(f"exec: restore {label}", str(plans[label])), label))
    execs = {id(s): Samples(s.name, engine_argv(s.plan)) for how, s, _ in rows if how == "exec"}
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
                            run_pool_once(s, sock)
                        else:
                            run_once(execs[id(s)], serial=True)
                            s.first = execs[id(s)].first
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
    for how, s, label in rows:
        variant = f"{how}-restore" if label else f"{how}-boot"
        size = SIZES.get(label, 256 * MiB) >> 20
        extra = {"disk_mib": disk[label] >> 20} if label else {}
        result("snapshot_restore", variant=variant, size_mib=size, n=len(s.first),
               first_min_ms=min(s.first), first_median_ms=statistics.median(s.first),
               **extra)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
