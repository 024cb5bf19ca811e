"""Restore of the Linux test guest inside the nested rig: svlaunch's engine next to QEMU's
``-incoming`` from a file of the same guest, in one L1 run (docs/snapshot.md).

Inside L1 (``bench/_rig_snapshot_l1.py``) each VMM boots the same VM (2 vCPUs, 256 MiB, a
virtio-blk disk, COM1), waits until the guest waits for its power button, and saves it
(svlaunch: QMP ``migrate file:DIR``; QEMU 7.2: ``migrate exec:cat > FILE``). Then N restores
each, interleaved: the request (an exec'd engine, a pool request, ``qemu -incoming exec:cat
FILE``) until QMP says running. The last restore of each is powered off through the guest's
power button (the guest works). Times are L1's (QEMU TCG, nested SVM: slower than a host).

    python bench/rig_snapshot.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
L1_SCRIPT = REPO / "bench" / "_rig_snapshot_l1.py"
DATA = REPO / "build" / "rig-snapshot"


def main(argv: list[str]) -> int:
    from rigutil import GUEST, run_rig_raw

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--initrd", default=str(GUEST / "initrd.img"))
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args(argv)
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    DATA.mkdir(parents=True, exist_ok=True)
    disk = DATA / "bench-disk.img"
    disk.write_bytes(os.urandom(4 << 20))
    kernel = GUEST / "vmlinuz"
    cmd = (
        f"python3 {L1_SCRIPT} --kernel {kernel} --initrd {a.initrd} --disk {disk} "
        f"--runs {a.runs} --work /tmp/rigbench"
    )
    res = run_rig_raw(cmd, files=[L1_SCRIPT, kernel, a.initrd, disk], timeout=a.timeout, qemu=True)
    rows = [json.loads(line.split("RIGBENCH ", 1)[1]) for line in res.stdout.splitlines()
            if "RIGBENCH {" in line]  # fmt: skip
    if res.returncode != 0 or not rows:
        print(res.explain())
        return 1
    print(f"rig_snapshot: the Linux test guest (2 vCPUs, 256 MiB, virtio-blk) in the rig's L1 "
          f"(QEMU TCG, nested SVM), N={a.runs}, {time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
    for r in rows:
        if r["step"] == "save":
            print(f"  save  {r['vmm']:<14} {r['status']:<10} {r['s']:7.2f} s, "
                  f"{r['disk_mib']} MiB on disk (booted: {r['booted']})")  # fmt: skip
    print(
        f"\n{'restore request -> running (ms)':<36} {'min':>8} {'median':>8} {'max':>8}  guest powered off"
    )
    found: dict[str, list[float]] = {}
    for vmm in ("svlaunch-pool", "svlaunch-exec", "qemu"):
        ms = [1000 * r["s"] for r in rows if r["vmm"] == vmm and r["step"] == "restore"]
        if ms:
            found[vmm] = ms
        off = [
            r.get("powered_off")
            for r in rows
            if r["vmm"] == vmm and r.get("powered_off") is not None
        ]
        if ms:
            print(f"{vmm:<36} {min(ms):8.1f} {statistics.median(ms):8.1f} {max(ms):8.1f}  "
                  f"{off[0] if off else '-'}")  # fmt: skip
    print("\ngoal: well ahead of QEMU's -incoming in the rig")
    from bench._result import result

    for vmm, ms in found.items():
        result("rig_snapshot", vmm=vmm, n=len(ms), restore_min_ms=min(ms),
               restore_median_ms=statistics.median(ms))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
