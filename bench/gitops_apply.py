"""Benchmark: `svlaunch apply` of a git repository of 50 VMs onto an empty host.

Each VM is a paused tiny guest (tests/support/tiny_guest.py: 1 vCPU, 128 MiB, built and left in
prelaunch by `paused = true`), so the number is svlaunch's and the engine's start-up, not a
guest's boot. Printed: wall time of one `svlaunch apply --yes` from nothing to 50 VMs running
(the engines exec'd, and through the engine pool, docs/pool.md), of the `svlaunch down` of all
of them by an `apply --prune` of an empty revision, and for reference 50 `svlaunch up -d` one
after the other (what a shell loop does) and 50 QEMU microvm processes started paused
(`qemu-system-x86_64 -M microvm -S -daemonize`) one after the other, in the same run.

usage: .venv/bin/python bench/gitops_apply.py [--count 50] [--parallel 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
from bench._result import result  # noqa: E402


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return time.perf_counter() - t0


def count_running(env: dict[str, str]) -> int:
    import json

    out = subprocess.run([sys.executable, "-m", "launcher.cli", "ps", "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True).stdout  # fmt: skip
    return len(json.loads(out))


def qemu_loop(tmp: Path, count: int) -> float | None:
    """``count`` QEMU microvm processes started paused and daemonized, one after the other
    (bench/engine_startup.py's trivial-BIOS microvm)."""
    sys.path.insert(0, str(ROOT))
    from bench.engine_startup import qemu_microvm

    argv = qemu_microvm(tmp)
    if argv is None:
        return None
    i = argv.index("-serial")
    argv = argv[:i] + argv[i + 2 :]
    pids = []
    t0 = time.perf_counter()
    for n in range(count):
        pidfile = tmp / f"q{n}.pid"
        subprocess.run([*argv, "-S", "-daemonize", "-pidfile", str(pidfile)], check=True,
                       capture_output=True)  # fmt: skip
        pids.append(int(pidfile.read_text()))
    took = time.perf_counter() - t0
    for pid in pids:
        os.kill(pid, 9)
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args()
    from gitrepo import Repo
    from lifecycle import manifest
    from tiny_guest import HANG, say

    cli = [sys.executable, "-m", "launcher.cli"]
    results: list[tuple[str, float]] = []
    keyed: dict[str, float] = {}  # the RESULT line's figures
    with tempfile.TemporaryDirectory(prefix="svl-bench-") as tmp_s:
        tmp = Path(tmp_s)
        img = tmp / "img"
        img.mkdir()
        repo = Repo(tmp / "git")
        texts = {}
        for i in range(args.count):
            name = f"b{i:03d}"
            texts[name] = manifest(
                img, name, say(b"up\n") + HANG, top="paused = true\n"
            ).read_text()
            repo.write(f"{name}.toml", texts[name])
        repo.commit(f"{args.count} VMs")
        for pool in ("off", "on"):
            env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp / f"rt-{pool}"),
                   "SVLAUNCH_POOL": pool}  # fmt: skip
            if pool == "on":
                subprocess.run([*cli, "pool", "start"], cwd=ROOT, env=env, capture_output=True)
                time.sleep(1.0)
            apply = [*cli, "apply", repo.source, "--yes", "--host", "bench",
                     "--parallel", str(args.parallel), "--stop-timeout", "0"]  # fmt: skip
            took = run(apply, env)
            assert count_running(env) == args.count
            keyed[f"apply_pool_{pool}_s"] = took
            results.append((f"svlaunch apply: {args.count} VMs created (pool {pool})", took))
            took = run(apply, env)
            results.append((f"svlaunch apply again: no changes (pool {pool})", took))
            for name in texts:
                repo.remove(f"{name}.toml")
            repo.commit("empty")
            took = run([*apply, "--prune"], env)
            assert count_running(env) == 0
            results.append(
                (f"svlaunch apply --prune: {args.count} VMs destroyed (pool {pool})", took)
            )
            for name, text in texts.items():
                repo.write(f"{name}.toml", text)
            repo.commit("again")
            if pool == "on":
                subprocess.run([*cli, "pool", "stop"], cwd=ROOT, env=env, capture_output=True)
        env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp / "rt-loop"), "SVLAUNCH_POOL": "off"}
        t0 = time.perf_counter()
        for name in texts:
            run([*cli, "up", "-d", str(repo.work / f"{name}.toml")], env)
        keyed["up_loop_s"] = time.perf_counter() - t0
        results.append((f"{args.count} x svlaunch up -d, one after the other", keyed["up_loop_s"]))
        for name in texts:
            run([*cli, "down", name, "--force"], env)
        q = qemu_loop(tmp, args.count)
        if q is not None:
            keyed["qemu_loop_s"] = q
            results.append(
                (f"{args.count} x qemu-system-x86_64 -M microvm -S, one after the other", q)
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.count} paused tiny VMs, --parallel {args.parallel}, load average {load}")
    for name, took in results:
        print(f"{name:64s} {took:7.2f} s  ({took / args.count * 1000:6.1f} ms per VM)")
    result("gitops_apply", vms=args.count, parallel=args.parallel, **keyed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
