"""Memory per VM: 20 paused 256 MiB VMs through the engine pool, next to 20 exec'd engines and
20 QEMU microvms, in one run (docs/pool.md).

For each process: USS (Private_Clean + Private_Dirty) and PSS from ``/proc/PID/smaps_rollup``,
and the same two numbers *beyond guest RAM*: the guest RAM mapping (the one mapping of exactly
the guest's size, found in ``/proc/PID/smaps``) is subtracted, so what remains is what the
VMM itself costs per VM. The VMs are paused before their first instruction (the engine's
``paused`` plan, QEMU's ``-S``), so guest RAM holds only what the loader wrote. Pool requests
are ``QUIET`` seconds apart, as ``svlaunch up`` runs are, so each engine is a warmed spare
(``engine/pool/warmup.py``). The pool's own USS/PSS is printed too: it is paid once per host,
not per VM (its waiting spare, one more process, is not counted).

    python bench/pool_memory.py [COUNT]
"""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from bench._result import result  # noqa: E402
from bench.engine_startup import qemu_microvm  # noqa: E402
from bench.pool_startup import QUIET, become_subreaper, machine, start_pool  # noqa: E402

GUEST = 256 << 20
SETTLE = 2.0  # seconds after the last start before measuring


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup's kB fields."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key] = int(parts[0])
    return out


def guest_ram(pid: int, size: int = GUEST) -> dict[str, int]:
    """The kB fields of the mapping(s) exactly ``size`` long (guest RAM)."""
    want = size >> 10
    total: dict[str, int] = {}
    current: dict[str, int] = {}

    def flush() -> None:
        if current.get("Size") == want:
            for k, v in current.items():
                total[k] = total.get(k, 0) + v

    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):  # a new mapping's header line
            flush()
            current = {}
            continue
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            current[key] = int(parts[0])
    flush()
    return total


@dataclasses.dataclass
class Row:
    uss: float  # MiB
    pss: float
    uss_vmm: float  # beyond guest RAM
    pss_vmm: float


def measure(pid: int) -> Row:
    r, g = rollup(pid), guest_ram(pid)

    def uss(d: dict[str, int]) -> int:
        return d.get("Private_Clean", 0) + d.get("Private_Dirty", 0)

    mib = 1024.0
    return Row(
        uss(r) / mib, r["Pss"] / mib, (uss(r) - uss(g)) / mib, (r["Pss"] - g.get("Pss", 0)) / mib
    )


def summary(name: str, rows: list[Row]) -> str:
    def m(values: list[float]) -> str:
        return f"{statistics.median(values):6.2f} {max(values):6.2f}"

    return (f"{name:<30} {len(rows):3d}  {m([r.uss for r in rows])}  {m([r.pss for r in rows])}"
            f"  {m([r.uss_vmm for r in rows])}  {m([r.pss_vmm for r in rows])}")  # fmt: skip


def wait_built(pids: list[int], timeout: float = 120) -> None:
    """Until each engine has its vCPU thread (built and parked), then ``SETTLE`` more."""
    deadline = time.monotonic() + timeout

    def threads(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return 0

    while any(threads(pid) < 2 for pid in pids):
        if time.monotonic() > deadline:
            raise SystemExit("not every engine came up")
        time.sleep(0.1)
    time.sleep(SETTLE)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    from tiny_guest import HANG, make_plan, say, write_guest

    from engine.__main__ import engine_argv
    from engine.pool import client

    become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="svbench-mem-"))
    kernel = write_guest(tmp, say(b"x") + HANG)
    plan = make_plan(kernel, memory=GUEST, serial_backend="file", serial_file=tmp / "serial")
    plan = dataclasses.replace(plan, paused=True, log_file=None)
    (tmp / "plan.json").write_text(plan.dumps())
    pool, sock = start_pool(tmp)
    procs: list[int] = []
    results: dict[str, list[Row]] = {}
    try:
        # through the pool
        pooled = []
        for i in range(count):
            time.sleep(QUIET)  # as between two `svlaunch up`s: each VM gets a warmed spare
            log = os.open(tmp / f"pool.vm.{i}", os.O_WRONLY | os.O_CREAT, 0o600)
            opts = client.client_options(paused=True)
            started = client.start(sock, str(tmp / "plan.json"), {"log": log}, opts)
            os.close(log)
            os.close(started.pidfd)
            pooled.append(started.pid)
        procs += pooled
        wait_built(pooled)
        # exec'd, as `svlaunch up` without a pool
        execd = []
        for i in range(count):
            with open(tmp / f"exec.vm.{i}", "wb") as out:
                p = subprocess.Popen(engine_argv(str(tmp / "plan.json")), stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
            execd.append(p.pid)
        procs += execd
        wait_built(execd)
        # QEMU microvm, paused before its first instruction
        qemu = qemu_microvm(tmp, memory="256M")
        qemus = []
        if qemu:
            for _ in range(count):
                p = subprocess.Popen([*qemu, "-S"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                qemus.append(p.pid)
            procs += qemus
            time.sleep(SETTLE)
        results["pool: forked engine"] = [measure(pid) for pid in pooled]
        results["exec: engine_argv"] = [measure(pid) for pid in execd]
        if qemus:
            results["qemu microvm -S"] = [measure(pid) for pid in qemus]
        pool_row = measure(pool.pid)
    finally:
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in procs:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        pool.terminate()
        pool.wait(30)
    print(machine())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{count} paused VMs of {GUEST >> 20} MiB each; load average {load}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
    print(f"{'MiB per VM (median, max)':<30} {'n':>3}  {'USS':^13}  {'PSS':^13}  "
          f"{'USS - guest RAM':^13}  {'PSS - guest RAM':^13}")  # fmt: skip
    for name, rows in results.items():
        print(summary(name, rows))
    print(f"{'the pool itself (once a host)':<30} {1:3d}  {pool_row.uss:6.2f} {'':6}  "
          f"{pool_row.pss:6.2f}")  # fmt: skip
    print("goal: <= 4 MiB USS per VM beyond guest RAM (StratoVirt's claim)")
    keys = {"pool: forked engine": "pool", "exec: engine_argv": "exec", "qemu microvm -S": "qemu"}
    for name, rows in results.items():
        values: dict[str, float] = {}
        for field in ("uss", "pss", "uss_vmm", "pss_vmm"):
            column = [getattr(r, field) for r in rows]
            values[f"{field}_median_mib"] = statistics.median(column)
            values[f"{field}_max_mib"] = max(column)
        result("pool_memory", variant=keys[name], n=len(rows), guest_mib=GUEST >> 20, **values)
    result("pool_memory", variant="pool-itself", n=1, uss_mib=pool_row.uss, pss_mib=pool_row.pss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
