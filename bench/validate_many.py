"""Benchmark: one `svlaunch validate DIR` over 1,000 generated manifests, plus cold starts.

Prints wall-clock minimum and median of N runs (fresh interpreters; the machine is shared, so
the minimum is the best estimate of the cost and the median shows the noise) for:
  - `svlaunch validate --quiet DIR` with 1,000 manifests (TOML and YAML, microvm and q35 mixes);
  - `svlaunch validate one.toml` and `svlaunch cmdline examples/quickstart.toml`, cold;
  - `python -c pass` in the same loop, for reference (svlaunch's own cost is the difference).
Targets on the 2-core dev machine: the 1,000-manifest run <= 1.5 s, cold cmdline <= 60 ms.

usage: .venv/bin/python bench/validate_many.py [--count 1000] [--runs 5] [--cold-runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._result import result  # noqa: E402

MICROVM = """\
name = "vm-{i}"
qmp = "/run/svlaunch/vm-{i}.qmp"
serial = "pty"
iothreads = ["io0"]

[cpu]
cpus = {cpus}

[memory]
size = "{mem}M"

[boot]
kernel = "images/vmlinux"
cmdline = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda"

[drives.rootfs]
file = "images/rootfs-{i}.ext4"
iothread = "io0"

[nets.net0]
ifname = "tap{i}"
mac = "52:54:00:{a:02x}:{b:02x}:01"

[vsock]
guest-cid = {cid}
"""

Q35 = """\
name: std-{i}
qmp: /run/svlaunch/std-{i}.qmp
machine: {{type: q35}}
cpu: {{cpus: 4, sockets: 2, cores: 2}}
memory: {{size: 2G}}
numa:
  nodes:
    - {{id: 0, cpus: "0-1", size: 1G, host-nodes: [0], policy: bind}}
    - {{id: 1, cpus: "2-3", size: 1G, host-nodes: [0], policy: bind}}
boot:
  kernel: images/vmlinuz
pflash:
  - {{unit: 0, file: OVMF_CODE.fd, readonly: true}}
drives:
  rootfs: {{file: "images/std-{i}.raw", addr: "0x3", bootindex: 0}}
nets:
  net0: {{ifname: "tq{i}", addr: "0x4"}}
"""


def generate(folder: str, count: int) -> None:
    for i in range(count):
        if i % 4 == 3:
            text, ext = Q35.format(i=i), "yaml"
        else:
            text = MICROVM.format(
                i=i, cpus=1 + i % 4, mem=256 * (1 + i % 4), a=i >> 8 & 255, b=i & 255, cid=3 + i
            )
            ext = "toml"
        with open(os.path.join(folder, f"vm-{i:04d}.{ext}"), "w", encoding="utf-8") as f:
            f.write(text)


# Measure what users get: bytecode caches written and used.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(cmd: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    rc = subprocess.run(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode
    return time.perf_counter() - t0, rc


def interleaved(cmds: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Run every command once per round, ``runs`` rounds: load spikes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for name, cmd in cmds.items():  # warm-up: bytecode caches, page cache
        assert run_once(cmd)[1] == 0, f"{name} failed"
    for _ in range(runs):
        for name, cmd in cmds.items():
            dt, rc = run_once(cmd)
            assert rc == 0, f"{name} failed"
            times[name].append(dt)
    return times


def line(name: str, samples: list[float], unit: float = 1e3, suffix: str = "ms") -> str:
    lo, mid = min(samples) * unit, statistics.median(samples) * unit
    prec = 0 if suffix == "ms" else 3
    return f"{name:44s} min {lo:7.{prec}f} {suffix}  median {mid:7.{prec}f} {suffix}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=30)
    args = ap.parse_args()
    py = sys.executable
    cli = [py, "-m", "launcher.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, args.count)
        many = interleaved({"many": [*cli, "validate", "--quiet", tmp]}, args.runs)["many"]
        one = os.path.join(tmp, "vm-0000.toml")
        cold = interleaved(
            {
                "python -c pass": [py, "-c", "pass"],
                "svlaunch validate one.toml (cold)": [*cli, "validate", one],
                "svlaunch cmdline examples/quickstart.toml": [
                    *cli,
                    "cmdline",
                    os.path.join(ROOT, "examples", "quickstart.toml"),
                ],
            },
            args.cold_runs,
        )
    best = min(many)
    verdict = "ok" if best <= 1.5 else "OVER TARGET"
    print(
        line(f"svlaunch validate DIR ({args.count} manifests)", many, 1, "s")
        + f"  ({best / args.count * 1e3:.2f} ms/manifest; target <= 1.5 s: {verdict})"
    )
    for name, samples in cold.items():
        print(line(name, samples))
    bare = min(cold["python -c pass"])
    own = min(cold["svlaunch cmdline examples/quickstart.toml"]) - bare
    print(f"cmdline's own cost (min - min python -c pass): {own * 1e3:.0f} ms")
    result("validate_many", measure="many", count=args.count, runs=args.runs,
           min_s=f"{best:.3f}", median_s=f"{statistics.median(many):.3f}")  # fmt: skip
    keys = dict(zip(cold, ("python", "validate_one", "cmdline"), strict=True))
    for name, samples in cold.items():
        result("validate_many", measure=keys[name], runs=args.cold_runs,
               min_ms=min(samples) * 1e3, median_ms=statistics.median(samples) * 1e3)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
