"""Benchmark: the CPU an idle `svlaunch agent` uses (nothing changes in the repository).

The agent supervises VMs paused tiny guests started from a git repository; once it has
applied them, the repository stays unchanged for the measured window. Between looks the agent
sleeps in one select on the engines' pidfds, a signal pipe and its timer; each look fetches
(git), reads the revision, asks each VM over QMP and writes its status. Printed, per interval:
the agent's CPU time over the window (its own and its reaped children's, e.g. git, from
/proc/PID/stat), as a share of one CPU and per look, and its resident memory.

usage: .venv/bin/python bench/gitops_agent_idle.py [--vms 5] [--window 120] [--intervals 30,5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
from bench._result import result  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK  # utime stime cutime cstime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(
    repo_source: str, env: dict[str, str], interval: float, window: float
) -> tuple[str, dict[str, str | float | int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "agent", repo_source, "--host", "bench",
         "--interval", f"{interval}s"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    looks: list[dict] = []
    applied = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["event"] == "look":
                looks.append(ev)
                if ev["result"] in ("ok", "applied"):
                    applied.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert applied.wait(300), "the agent never applied the repository"
        while looks[-1]["result"] != "ok":  # the VMs are up and nothing is left to do
            time.sleep(0.2)
        time.sleep(1.0)
        before, n0 = cpu_seconds(proc.pid), len(looks)
        t0 = time.monotonic()
        time.sleep(window)
        used, wall, n = cpu_seconds(proc.pid) - before, time.monotonic() - t0, len(looks) - n0
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    per = f"{used / n * 1000:7.1f} ms per look" if n else "no look in the window"
    text = (
        f"interval {interval:5.0f} s: {used:6.3f} s CPU in {wall:5.0f} s = {used / wall * 100:6.3f}%"
        f" of one CPU; {n} looks, {per}; RSS {rss:5.1f} MiB"
    )
    figures: dict[str, str | float | int] = {
        "interval_s": int(interval), "window_s": round(wall), "looks": n,
        "cpu_pct": f"{used / wall * 100:.3f}", "per_look_ms": used / n * 1000 if n else 0.0,
        "rss_mib": rss,
    }  # fmt: skip
    return text, figures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=5)
    ap.add_argument("--window", type=float, default=120.0)
    ap.add_argument("--intervals", default="30,5")
    args = ap.parse_args()
    from gitrepo import Repo
    from lifecycle import manifest
    from tiny_guest import HANG, say

    lines: list[tuple[str, dict[str, str | float | int]]] = []
    with tempfile.TemporaryDirectory(prefix="svl-bench-") as tmp_s:
        tmp = Path(tmp_s)
        img = tmp / "img"
        img.mkdir()
        repo = Repo(tmp / "git")
        for i in range(args.vms):
            name = f"idle{i}"
            text = manifest(img, name, say(b"up\n") + HANG, top="paused = true\n").read_text()
            repo.write(f"{name}.toml", text)
        repo.commit("idle VMs")
        env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp / "rt"), "SVLAUNCH_POOL": "off"}
        try:
            for interval in (float(x) for x in args.intervals.split(",")):
                lines.append(measure(repo.source, env, interval, args.window))
        finally:
            out = subprocess.run([sys.executable, "-m", "launcher.cli", "ps", "--json"],
                                 cwd=ROOT, env=env, capture_output=True, text=True).stdout  # fmt: skip
            for r in json.loads(out or "[]"):
                subprocess.run([sys.executable, "-m", "launcher.cli", "down", r["name"], "--force"],
                               cwd=ROOT, env=env, capture_output=True)  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"idle agent, {args.vms} paused VMs, {args.window:.0f} s window, load average {load}")
    for text, _ in lines:
        print(text)
    for _, figures in lines:
        result("gitops_agent_idle", vms=args.vms, **figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
