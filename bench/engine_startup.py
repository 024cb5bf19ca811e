"""Engine start-up: exec → guest poweroff for a trivial guest, and peak RSS, next to QEMU microvm.

The guest's very first instructions power it off through the ACPI PM port, so exec → exit is
exec → first guest instruction plus a few microseconds. Each side runs N times; the minimum and
median are printed (the host is shared, so the minimum is the cleanest number). QEMU runs a
16-byte "BIOS" whose reset vector writes to isa-debug-exit, its equivalent of a trivial guest.

    python bench/engine_startup.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def measure(argv: list[str], n: int) -> tuple[list[float], list[int], int]:
    times, rss, rc = [], [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
        )
        _, status, usage = os.wait4(pid, 0)
        times.append((time.perf_counter() - t0) * 1000)
        rss.append(usage.ru_maxrss // 1024)
        rc = os.waitstatus_to_exitcode(status)
    return times, rss, rc


def report(name: str, times: list[float], rss: list[int], rc: int) -> None:
    print(
        f"{name:<28} exec->exit min {min(times):6.1f} ms  median {statistics.median(times):6.1f} ms"
        f"  peak RSS {max(rss):4d} MiB  (exit {rc})"
    )


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    from tiny_guest import make_plan, poweroff, write_guest

    tmp = Path(tempfile.mkdtemp(prefix="svbench-"))
    plan = make_plan(write_guest(tmp, poweroff()), memory=128 << 20)
    (tmp / "plan.json").write_text(json.dumps(plan.to_json()))
    report(
        "svlaunch engine (python)",
        *measure([sys.executable, "-m", "engine", "run", "--plan", str(tmp / "plan.json")], n),
    )
    report("python -c pass (floor)", *measure([sys.executable, "-c", "pass"], n))
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        bios = bytearray(64 * 1024)
        bios[-16:-11] = b"\xb0\x00\xe6\xf4\xf4"  # mov al,0 ; out 0xf4,al ; hlt
        (tmp / "bios.bin").write_bytes(bytes(bios))
        argv = [
            qemu,
            "-M",
            "microvm,x-option-roms=off,rtc=off",
            "-enable-kvm",
            "-m",
            "128M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-bios",
            str(tmp / "bios.bin"),
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ]
        report("qemu microvm (trivial bios)", *measure(argv, n))
    shutil.rmtree(tmp, ignore_errors=True)
    print("goal: engine exec->first instruction <= 30 ms and <= 20 MiB over the Python floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
