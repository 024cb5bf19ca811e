"""Start-up time the sandbox adds: realize() → payload running, against the same payload unjailed.

The payload is ``python -m engine.ozone.probe`` (interpreter start, project imports, seccomp
install, one line on stdout). "jailed" is from ``Sandbox.from_plan`` + ``realize()`` to that line;
"plain" is the same program as a plain subprocess; the difference is what the sandbox adds
(validation, ldd-closure cache lookup, jail dir, ~30 bind mounts, cgroups, namespaces,
pivot_root or MS_MOVE + chroot, mknod, capability drop). Both root modes are timed, interleaved
with the plain runs. Teardown is timed separately. Needs root.

    python bench/sandbox_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._result import result  # noqa: E402

PROBE = [sys.executable, "-m", "engine.ozone.probe"]
#: pivot_root (a normal host) and MS_MOVE + chroot (what an initramfs root such as the rig's L1 gets)
MODES = ("pivot", "move")


def _plan(d: str):
    from engine.plan import (
        BootPlan,
        HostFile,
        MemoryPlan,
        Plan,
        RamRange,
        SandboxPlan,
        TopologyPlan,
        VcpuPlan,
    )

    kernel = os.path.join(d, "vmlinux")
    Path(kernel).write_bytes(b"k")
    return Plan(
        name="bench", arch="x86_64", machine="microvm", topology=TopologyPlan(1, 1, 1, 1, 1, 1, 1),
        vcpus=(VcpuPlan(0, 0, 0, 0, 0, 0, 0),),
        memory=MemoryPlan(size=128 << 20, ranges=(RamRange(0, 128 << 20),), mmio_hole=(0xC0000000, 1 << 30)),
        boot=BootPlan(kernel=kernel), host_files=(HostFile(kernel, "kernel"),),
        sandbox=SandboxPlan(name="bench", exec_file="/usr/bin/stratovirt", uid=1000, gid=1000,
                            root=os.path.join(d, "srv"), cgroup=(("memory.limit_in_bytes", "1G"),)),
    )  # fmt: skip


def _jailed(plan, state: str, mode: str = "auto") -> tuple[float, float, float]:
    from engine.ozone.sandbox import Sandbox

    r, w = os.pipe()
    out_r, out_w = os.pipe()
    saved = os.dup(0), os.dup(1)
    os.dup2(r, 0)
    os.dup2(out_w, 1)
    t0 = time.perf_counter()
    try:
        sb = Sandbox.from_plan(plan, state_dir=state, root_mode=mode)
        jailed = sb.realize(PROBE)
        t_exec = time.perf_counter()
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in (r, out_w, *saved):
            os.close(fd)
    with os.fdopen(out_r) as out:
        out.readline()
    t_run = time.perf_counter()
    os.close(w)
    jailed.wait()
    t1 = time.perf_counter()
    sb.teardown()
    return t_exec - t0, t_run - t0, time.perf_counter() - t1


def _plain(bpf_dir: str) -> float:
    """The same payload with the same precompiled filters, so only the sandbox differs."""
    env = dict(os.environ, SVLAUNCH_SECCOMP_DIR=bpf_dir, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    p = subprocess.Popen(PROBE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env)
    assert p.stdout is not None and p.stdin is not None
    p.stdout.readline()
    t = time.perf_counter() - t0
    p.stdin.close()
    p.wait()
    return t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("sandbox_startup: skipped (needs root)")
        return 0
    with tempfile.TemporaryDirectory() as d:
        plan = _plan(d)
        state = os.path.join(d, "state")
        from engine import seccomp

        bpf = os.path.join(d, "bpf")
        os.mkdir(bpf)
        seccomp.export_all(bpf)
        _jailed(plan, state)  # warm: fills the runtime-closure cache, page cache
        _plain(bpf)
        rows: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
        plain = []
        for _ in range(args.runs):  # interleaved, so load changes hit every column alike
            plain.append(_plain(bpf))
            for m in MODES:
                rows[m].append(_jailed(plan, state, m))
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    base = ms(plain)
    print(f"runs: {args.runs} (medians, interleaved)")
    print(f"  plain payload running (subprocess -> first line): {base:7.1f} ms")
    for m in MODES:
        to_exec, to_run, down = (ms([r[i] for r in rows[m]]) for i in range(3))
        print(f"  [{m}] sandbox set-up (from_plan + realize until exec): {to_exec:7.1f} ms")
        print(f"  [{m}] jailed payload running (realize -> first line):  {to_run:7.1f} ms")
        print(f"  [{m}] added by the sandbox:                             {to_run - base:7.1f} ms")
        print(f"  [{m}] teardown:                                         {down:7.1f} ms")
        result("sandbox_startup", mode=m, runs=args.runs, plain_median_ms=base,
               setup_median_ms=to_exec, running_median_ms=to_run, added_median_ms=to_run - base,
               teardown_median_ms=down)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
