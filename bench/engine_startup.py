"""Engine start-up: exec → first guest instruction, exec → exit, CPU time and peak RSS.

The tiny guest's first instructions write one byte to COM1 (``mov dx,0x3f8; mov al,'!'; out``)
and then power off through the ACPI PM port. The engine's serial is its stdout, a pipe to this
process, so "first instruction" is the moment that byte arrives here: a real exec of the engine,
timed from outside (the pipe adds a few microseconds). Each variant runs N times, interleaved
so that load on the shared host hits them alike; min and median are printed, plus the child's
CPU time (user+sys, the least load-sensitive number) and peak RSS. QEMU runs a 16-byte "BIOS"
whose reset vector writes to isa-debug-exit, its equivalent of a trivial guest.

    python bench/engine_startup.py [N] [--before DIR]

``--before DIR`` adds ``python -m engine`` run from another checkout (e.g. ``git archive`` of an
older commit) as a baseline row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from bench._result import result  # noqa: E402


@dataclass
class Samples:
    name: str
    argv: list[str]
    key: str = ""  # its RESULT lines' variant= (none: no RESULT line)
    first: list[float] = field(default_factory=list)  # ms, exec -> first serial byte
    exit: list[float] = field(default_factory=list)  # ms, exec -> reaped
    cpu: list[float] = field(default_factory=list)  # ms, child user+sys
    rss: list[int] = field(default_factory=list)  # MiB
    rc: int = 0


def run_once(s: Samples, *, serial: bool) -> None:
    r, w = os.pipe()
    ir, iw = os.pipe()  # stdin: a pipe nobody writes to (the serial's input side)
    t0 = time.perf_counter()
    pid = os.posix_spawn(
        s.argv[0],
        s.argv,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, ir, 0),
            (os.POSIX_SPAWN_DUP2, w, 1),
            (os.POSIX_SPAWN_CLOSE, r),
            (os.POSIX_SPAWN_CLOSE, iw),
        ],
    )
    os.close(w)
    os.close(ir)
    if serial:
        first = os.read(r, 1)
        if first:
            s.first.append((time.perf_counter() - t0) * 1000)
    _, status, usage = os.wait4(pid, 0)
    s.exit.append((time.perf_counter() - t0) * 1000)
    os.close(r)
    os.close(iw)
    s.cpu.append((usage.ru_utime + usage.ru_stime) * 1000)
    s.rss.append(usage.ru_maxrss // 1024)
    s.rc = os.waitstatus_to_exitcode(status)


def phases(argv: list[str], n: int) -> list[tuple[str, float, float]]:
    """Exec -> each start-up phase (the engine's $SVLAUNCH_STARTUP_TRACE marks): min, median."""
    runs: dict[str, list[float]] = {}
    order: list[str] = []
    for _ in range(n):
        r, w = os.pipe()
        ir, iw = os.pipe()
        env = dict(os.environ)
        t0 = time.monotonic()
        env["SVLAUNCH_STARTUP_TRACE"] = repr(t0)
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, ir, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, w, 2),
                (os.POSIX_SPAWN_CLOSE, r),
                (os.POSIX_SPAWN_CLOSE, iw),
            ],
        )
        os.close(w)
        os.close(ir)
        with os.fdopen(r) as f:
            text = f.read()
        os.waitpid(pid, 0)
        os.close(iw)
        for line in text.splitlines():
            if line.startswith("startup-trace "):
                ms, _, phase = line[len("startup-trace ") :].strip().partition(" ms  ")
                if phase not in runs:
                    order.append(phase)
                runs.setdefault(phase, []).append(float(ms))
    return [(p, min(runs[p]), statistics.median(runs[p])) for p in order]


def fmt(values: list[float]) -> str:
    if not values:
        return f"{'-':>6}   {'-':>6}  "
    return f"{min(values):6.1f}   {statistics.median(values):6.1f}  "


def report(s: Samples) -> None:
    print(f"{s.name:<34} {fmt(s.first)} {fmt(s.exit)} {min(s.cpu):6.1f}  {max(s.rss):5d}   {s.rc}")


def first_values(s: Samples) -> dict[str, float]:
    """min and median of exec -> first instruction (nothing when the guest never wrote)."""
    if not s.first:
        return {}
    return {"first_min_ms": min(s.first), "first_median_ms": statistics.median(s.first)}


def result_line(bench: str, s: Samples) -> None:
    result(bench, variant=s.key, n=len(s.exit), **first_values(s), exit_min_ms=min(s.exit),
           exit_median_ms=statistics.median(s.exit), cpu_min_ms=min(s.cpu),
           rss_max_mib=max(s.rss), rc=s.rc)  # fmt: skip


def qemu_microvm(tmp: Path, memory: str = "128M", char: bytes = b"!") -> list[str] | None:
    """QEMU microvm with a 16-byte "BIOS" that writes ``char`` to COM1 and exits (None: no QEMU)."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return None
    bios = bytearray(64 * 1024)
    # mov al,CHAR ; mov dx,0x3f8 ; out dx,al ; mov al,0 ; out 0xf4,al ; hlt
    code = b"\xb0" + char + b"\xba\xf8\x03\xee\xb0\x00\xe6\xf4\xf4"
    bios[-16 : -16 + len(code)] = code
    (tmp / "bios.bin").write_bytes(bytes(bios))
    return [qemu, "-M", "microvm,x-option-roms=off,rtc=off", "-enable-kvm", "-m", memory,
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-bios", str(tmp / "bios.bin"), "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]  # fmt: skip


def main() -> int:
    args = sys.argv[1:]
    before = None
    if "--before" in args:
        i = args.index("--before")
        before = os.path.abspath(args[i + 1])
        del args[i : i + 2]
    n = int(args[0]) if args else 20
    from tiny_guest import make_plan, poweroff, say, write_guest

    from engine.__main__ import engine_argv

    tmp = Path(tempfile.mkdtemp(prefix="svbench-"))
    kernel = write_guest(tmp, say(b"!") + poweroff())
    plan = make_plan(kernel, memory=128 << 20, serial_backend="stdio")
    (tmp / "plan.json").write_text(json.dumps(plan.to_json()))
    on = dataclasses.replace(plan, seccomp=True)
    (tmp / "plan-seccomp.json").write_text(json.dumps(on.to_json()))
    py = sys.executable
    engines = [
        Samples(
            "engine: python -m engine",
            [py, "-m", "engine", "run", "--plan", f"{tmp}/plan.json"],
            "python-m-engine",
        ),
        Samples("engine: engine_argv (-I -S)", engine_argv(f"{tmp}/plan.json"), "exec"),
        Samples(
            "engine: engine_argv, seccomp on", engine_argv(f"{tmp}/plan-seccomp.json"), "seccomp"
        ),
    ]
    if before:
        # -m engine resolves against the current directory first: run it from the old tree.
        script = f"import os,runpy,sys; os.chdir({before!r}); sys.path.insert(0, {before!r}); "
        script += "sys.argv[0]='engine'; runpy.run_module('engine', run_name='__main__')"
        argv = [py, "-c", script, "run", "--plan", f"{tmp}/plan.json"]
        engines.insert(0, Samples("before: python -m engine", argv))
    floors = [
        Samples("floor: python -c pass", [py, "-c", "pass"], "python"),
        Samples("floor: python -I -S -c pass", [py, "-I", "-S", "-c", "pass"], "python-I-S"),
    ]
    argv = qemu_microvm(tmp)
    if argv:
        engines.append(Samples("qemu microvm (trivial bios)", argv, "qemu"))
    with open(os.devnull, "w") as null:
        saved = os.dup(2)
        os.dup2(null.fileno(), 2)  # the engines' PVM notice and QEMU's CPUID warnings
        try:
            for _ in range(n):
                for s in engines:
                    run_once(s, serial=True)
                for s in floors:
                    run_once(s, serial=False)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    print(f"N={n}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':<34} first instr (ms)   exit (ms)        CPU ms  RSS   exit")
    print(
        f"{'':<34} {'min':>6}   {'median':>6}   {'min':>6}   {'median':>6}   {'min':>6}  {'MiB':>5}"
    )
    for s in engines + floors:
        report(s)
    print(f"\nphases of engine_argv (exec -> mark, ms; N={n}):  min   median")
    for phase, lo, med in phases(engines[1].argv, n):
        print(f"  {phase:<46} {lo:6.1f}   {med:6.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    print("goal: engine exec->first instruction <= 30 ms and <= 20 MiB over the Python floor")
    for s in engines + floors:
        if s.key:
            result_line("engine_startup", s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
