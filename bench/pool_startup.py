"""Start latency through the engine pool: request → first guest instruction, next to the exec
path and QEMU microvm, in one run (docs/pool.md).

The tiny guest writes one marker byte to COM1 first thing, then powers off. Through the pool,
the clock starts before the request is sent (connect, send, the hand-over to the pool's spare
engine, the reply) and stops when the marker arrives on the pipe the engine got as its ``log``
descriptor (its stdout and stderr; the PVM notice the engine logs before it runs the guest
comes first and is skipped). The first two rows give the pool ``QUIET`` seconds before the
request, as two ``svlaunch up`` runs do (each loads and checks its manifest first, which takes
longer), so a warmed spare is ready; "back to back" is the second of two requests in a row: no warmed
spare is ready, the pool forks one on the request's path. The exec rows are
``bench/engine_startup.py``'s: the engine as ``svlaunch up`` execs it. Variants run
interleaved, N times each; min and median are printed, and the phases of the first row
(``$SVLAUNCH_STARTUP_TRACE``, measured from the request).

    python bench/pool_startup.py [N]
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from bench._result import result  # noqa: E402
from bench.engine_startup import Samples, first_values, fmt, qemu_microvm, run_once  # noqa: E402

MARK = b"\x06"  # the guest's first byte: no log line contains it
QUIET = 0.25  # seconds without a request before a "ready pool" request
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Engines the pool forks are orphans: make them ours to reap (no zombies pile up)."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def start_pool(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(tmp / "pool.sock")
    log = open(tmp / "pool.log", "wb")  # noqa: SIM115  (the pool writes it while it runs)
    proc = subprocess.Popen([sys.executable, "-m", "engine.pool", "serve", "--socket", sock,
                             "--lock", str(tmp / "pool.lock")], cwd=ROOT, stdout=log, stderr=log)  # fmt: skip
    deadline = time.monotonic() + 120
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the pool did not start: {(tmp / 'pool.log').read_text()}")
        time.sleep(0.05)
    return proc, sock


@dataclasses.dataclass
class PoolSamples:
    name: str
    plan: str
    key: str = ""  # its RESULT line's variant=
    first: list[float] = dataclasses.field(default_factory=list)  # ms, request -> marker
    reply: list[float] = dataclasses.field(default_factory=list)  # ms, request -> reply (pid)
    phases: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def run_pool_once(s: PoolSamples, sock: str) -> None:
    from engine.pool import client

    r, w = os.pipe()
    options = client.client_options()
    t0 = time.perf_counter()
    options["env"]["SVLAUNCH_STARTUP_TRACE"] = repr(time.monotonic())
    started = client.start(sock, s.plan, {"log": w}, options)
    s.reply.append((time.perf_counter() - t0) * 1000)
    os.close(w)
    out = b""
    while MARK not in out:
        chunk = os.read(r, 65536)
        if not chunk:
            raise SystemExit(f"{s.name}: the engine ended before the guest ran: {out[-500:]!r}")
        out += chunk
    s.first.append((time.perf_counter() - t0) * 1000)
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(started.pid, 0)  # ours: we are the subreaper of the pool's orphans
    os.close(started.pidfd)
    for line in out.decode(errors="replace").splitlines():
        at = line.find("startup-trace ")  # the guest's byte has no newline after it
        if at >= 0:
            ms, _, phase = line[at + len("startup-trace ") :].strip().partition(" ms  ")
            s.phases.setdefault(phase, []).append(float(ms))


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}"


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    from tiny_guest import make_plan, poweroff, say, write_guest

    from engine.__main__ import engine_argv

    become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="svbench-pool-"))
    kernel = write_guest(tmp, say(MARK) + poweroff())
    plan = make_plan(kernel, memory=128 << 20, serial_backend="stdio")
    (tmp / "plan.json").write_text(plan.dumps())
    (tmp / "plan-seccomp.json").write_text(dataclasses.replace(plan, seccomp=True).dumps())
    pool, sock = start_pool(tmp)
    pooled = [
        PoolSamples("pool: request -> engine", str(tmp / "plan.json"), "pool"),
        PoolSamples(
            "pool: request -> engine, seccomp", str(tmp / "plan-seccomp.json"), "pool-seccomp"
        ),
        PoolSamples("pool: back to back (no spare)", str(tmp / "plan.json"), "pool-back-to-back"),
    ]
    execs = [
        Samples("exec: engine_argv (-I -S)", engine_argv(f"{tmp}/plan.json"), "exec"),
        Samples(
            "exec: engine_argv, seccomp on", engine_argv(f"{tmp}/plan-seccomp.json"), "seccomp"
        ),
    ]
    qemu = qemu_microvm(tmp, char=MARK)
    if qemu:
        execs.append(Samples("qemu microvm (trivial bios)", qemu, "qemu"))
    try:
        with open(os.devnull, "w") as null:
            saved = os.dup(2)
            os.dup2(null.fileno(), 2)  # the exec'd engines' PVM notice, QEMU's CPUID warnings
            try:
                for _ in range(n):
                    # a request finds a warmed spare when the pool had a quiet moment before
                    # it (server.SPARE_DELAY, then the warm-up), as between two `svlaunch up`s
                    # (each loads and checks its manifest first, longer than QUIET)
                    time.sleep(QUIET)
                    run_pool_once(pooled[0], sock)
                    run_once(execs[0], serial=True)
                    time.sleep(QUIET)
                    run_pool_once(pooled[1], sock)
                    for s in execs[1:]:
                        run_once(s, serial=True)
                    # a burst: the second request comes before the pool forked a new spare
                    run_pool_once(PoolSamples("", pooled[0].plan), sock)
                    run_pool_once(pooled[2], sock)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
    finally:
        pool.terminate()
        pool.wait(30)
    print(machine())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"N={n}, load average {load}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"{'':<36} first instr (ms)   reply (ms)")
    print(f"{'':<36} {'min':>6}   {'median':>6}    {'min':>6}   {'median':>6}")
    for p in pooled:
        print(f"{p.name:<36} {fmt(p.first)}  {fmt(p.reply)}")
    for s in execs:
        print(f"{s.name:<36} {fmt(s.first)}")
    print(f"\nphases through the pool (request -> mark, ms; N={n}):  min   median")
    for phase, values in pooled[0].phases.items():
        print(f"  {phase:<46} {min(values):6.1f}   {statistics.median(values):6.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    print("goal: request -> first guest instruction through the pool <= 5 ms")
    for p in pooled:
        result("pool_startup", variant=p.key, n=len(p.first), first_min_ms=min(p.first),
               first_median_ms=statistics.median(p.first), reply_min_ms=min(p.reply),
               reply_median_ms=statistics.median(p.reply))  # fmt: skip
    for s in execs:
        result("pool_startup", variant=s.key, n=len(s.exit), **first_values(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
