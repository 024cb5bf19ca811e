"""Benchmark: one `svlaunch validate DIR` over 1,000 generated manifests, plus cold start.

Prints wall-clock numbers (best of N runs) for:
  - `svlaunch validate DIR` with 1,000 manifests (TOML and YAML, microvm and q35 mixes);
  - `svlaunch validate one.toml` cold (a new interpreter each time);
  - `python -c pass` for reference.
Target: the 1,000-manifest run in <= 1.5 s on the 2-core dev machine.

usage: .venv/bin/python bench/validate_many.py [--count 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def timed(cmd: list[str], runs: int) -> tuple[float, int]:
    best, rc = float("inf"), 0
    for _ in range(runs):
        t0 = time.perf_counter()
        rc = subprocess.run(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode
        best = min(best, time.perf_counter() - t0)
    return best, rc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, args.count)
        many, rc = timed([py, "-m", "launcher.cli", "validate", "--quiet", tmp], args.runs)
        assert rc == 0, "generated manifests must be valid"
        one = os.path.join(tmp, "vm-0000.toml")
        cold, rc1 = timed([py, "-m", "launcher.cli", "validate", one], max(args.runs, 5))
        assert rc1 == 0
        bare, _ = timed([py, "-c", "pass"], max(args.runs, 5))
    per = many / args.count * 1e3
    verdict = "ok" if many <= 1.5 else "OVER TARGET"
    print(
        f"svlaunch validate DIR ({args.count} manifests): {many:.3f} s"
        f"  ({per:.2f} ms/manifest; target <= 1.5 s: {verdict})"
    )
    print(f"svlaunch validate one.toml (cold):        {cold * 1e3:.0f} ms")
    print(f"python -c pass:                           {bare * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
