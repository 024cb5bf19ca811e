"""virtio-blk read throughput inside the nested rig: svlaunch's builtin engine next to QEMU microvm.

Both inner VMMs boot the same VM on L1's KVM (the test guest's kernel, an initrd whose /init is
replaced by a small busybox script, 1 vCPU, 256 MiB) with the same raw disk image, which L1
holds in RAM (tmpfs: the host file system is out of the picture; O_DIRECT is unavailable there,
so both engines read through L1's page cache: QEMU with its default cache=writeback, the
builtin engine with direct=off). Inside L2 busybox ``dd`` measures, on /dev/vda:

- ``seq 1M``:  sequential 1 MiB reads over the disk (O_DIRECT in L2, so every read reaches the
               device), MiB/s;
- ``seq 4K``:  sequential 4 KiB reads (O_DIRECT), one ``dd`` process: per-request cost, IOPS;
- ``rand 4K``: 4 KiB reads at random offsets, one ``dd`` process each (busybox has no random
               reader); the same loop reading /dev/zero is timed too and subtracted, so the
               figure is the device's share. IOPS.

Everything in the rig runs under TCG, so absolute numbers are far below bare metal; the ratio
between the engines is the point (goal: builtin >= 0.8 x QEMU on sequential reads).

    python bench/rig_blk.py [--boots N] [--runs N] [--mib N] [--rand N] [--engines qemu,builtin]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "build" / "guest"
WORK = REPO / "build" / "rig-blk"
sys.path.insert(0, str(REPO / "scripts"))

from rig_cpio import CpioWriter  # noqa: E402

MIB = 2**20
BENCH_INIT = r"""#!/bin/sh
# bench/rig_blk.py's guest init (replaces the test guest's /init): time reads of /dev/vda with
# busybox dd, print SVBENCH lines, power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/svreport-modules); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
arg() { for a in $(cat /proc/cmdline); do case $a in "svbench.$1="*) echo "${a#*=}"; return ;; esac; done; echo "$2"; }
now() { set -- $(adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {print s, u}'); echo $(($1 * 1000000 + $2)); }
out() { echo "SVBENCH $*"; }
runs=$(arg runs 3); mib=$(arg mib 64); nrand=$(arg rand 200)
dev=/dev/vda
blocks=$(($(cat /sys/block/vda/size) / 8))
flag=iflag=direct
dd if=$dev of=/dev/null bs=4096 count=1 $flag 2>/dev/null || flag=
q=/sys/block/vda/queue
out "setup blocks=$blocks direct=${flag:+yes} max_segments=$(cat $q/max_segments) max_sectors_kb=$(cat $q/max_sectors_kb)"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
dd if=$dev of=/dev/null bs=1048576 count=4 $flag 2>/dev/null  # warm up the path
i=0
while [ $i -lt "$runs" ]; do
	drop; set -- $(cat /sys/block/vda/stat); r0=$1; t0=$(now)
	dd if=$dev of=/dev/null bs=1048576 count="$mib" $flag 2>/dev/null
	t1=$(now); set -- $(cat /sys/block/vda/stat)
	out "seq1m bytes=$((mib * 1048576)) us=$((t1 - t0)) requests=$(($1 - r0))"
	n=$((mib * 64))
	drop; t0=$(now)
	dd if=$dev of=/dev/null bs=4096 count=$n $flag 2>/dev/null
	t1=$(now)
	out "seq4k reads=$n us=$((t1 - t0))"
	awk -v n="$nrand" -v max="$blocks" -v seed=$((i + 1)) \
		'BEGIN {srand(seed); for (k = 0; k < n; k++) print int(rand() * max)}' >/tmp/offs
	drop; t0=$(now)
	for o in $(cat /tmp/offs); do dd if=/dev/zero of=/dev/null bs=4096 count=1 2>/dev/null; done
	t1=$(now)
	for o in $(cat /tmp/offs); do dd if=$dev of=/dev/null bs=4096 count=1 skip="$o" $flag 2>/dev/null; done
	t2=$(now)
	out "rand4k reads=$nrand us=$((t2 - t1)) base_us=$((t1 - t0))"
	i=$((i + 1))
done
out done
sync
if grep -qs _S5_ /sys/firmware/acpi/tables/DSDT; then poweroff -f; fi
reboot -f
"""


def bench_initrd(dest: Path) -> Path:
    """The test guest's initrd with our /init appended (a later cpio entry replaces an earlier)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write((GUEST / "initrd.img").read_bytes())
        w = CpioWriter(out)
        w.file("init", BENCH_INIT.encode(), 0o755)
        w.close()
    os.replace(tmp, dest)
    return dest


def disk_image(path: Path, mib: int) -> Path:
    """A raw image of ``mib`` MiB of random bytes (kept between runs when the size matches)."""
    if not path.exists() or path.stat().st_size != mib * MIB:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))
    return path


def manifest_text(initrd: Path, disk: Path, cmdline: str) -> str:
    return (
        'name = "rig-blk-bench"\nserial = "stdio"\n\n[machine]\ntype = "microvm"\n\n'
        '[cpu]\ncpus = 1\n\n[memory]\nsize = "256M"\n\n'
        f'[boot]\nkernel = "{GUEST / "vmlinuz"}"\ninitrd = "{initrd}"\ncmdline = "{cmdline}"\n\n'
        f'[drives.disk0]\nfile = "{disk}"\nreadonly = true\n'
        "direct = false  # L1 holds the image in tmpfs (no O_DIRECT); QEMU uses its page cache too\n"
    )


@dataclass
class Result:
    """Per-run measurements of one engine (None when a run failed)."""

    seq1m_mib_s: list[float] = field(default_factory=list)
    seq4k_iops: list[float] = field(default_factory=list)
    rand4k_iops: list[float] = field(default_factory=list)
    rand4k_raw_iops: list[float] = field(default_factory=list)
    inner_s: float | None = None
    error: str | None = None


LINE = re.compile(r"SVBENCH (\S+)(.*)")


def parse(stdout: str, res: Result) -> None:
    for line in stdout.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        f = dict(w.partition("=")[::2] for w in m.group(2).split())
        kind = m.group(1)
        if kind == "seq1m":
            res.seq1m_mib_s.append(int(f["bytes"]) / MIB / (int(f["us"]) / 1e6))
        elif kind == "seq4k":
            res.seq4k_iops.append(int(f["reads"]) / (int(f["us"]) / 1e6))
        elif kind == "rand4k":
            n, us, base = int(f["reads"]), int(f["us"]), int(f["base_us"])
            res.rand4k_raw_iops.append(n / (us / 1e6))
            if us > base:
                res.rand4k_iops.append(n / ((us - base) / 1e6))


def run_engine(vmm: str, manifest: Path, timeout: float) -> Result:
    cmd = [sys.executable, str(REPO / "scripts" / "rig"), str(manifest), "--vmm", vmm]
    cmd += ["--timeout", str(timeout)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    res = Result()
    parse(proc.stdout, res)
    m = re.search(r"rig: inner boot took ([\d.]+) s", proc.stderr)
    res.inner_s = float(m.group(1)) if m else None
    if proc.returncode != 0 or "SVBENCH done" not in proc.stdout:
        tail = "\n  ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        res.error = f"exit {proc.returncode}\n  {tail}"
    return res


def best(xs: list[float]) -> str:
    return f"{max(xs):9.1f}" if xs else f"{'-':>9}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="measurement rounds inside one boot")
    p.add_argument("--boots", type=int, default=2, help="boots per engine, alternating engines")
    p.add_argument("--mib", type=int, default=64, help="MiB read per sequential pass")
    p.add_argument("--disk-mib", type=int, default=128, help="size of the disk image")
    p.add_argument("--rand", type=int, default=200, help="random 4 KiB reads per round")
    p.add_argument("--engines", default="qemu,builtin")
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args(argv)
    if a.mib > a.disk_mib:
        p.error(f"--mib {a.mib} is larger than --disk-mib {a.disk_mib}")
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    initrd = bench_initrd(WORK / "initrd-bench.img")
    disk = disk_image(WORK / "disk.img", a.disk_mib)
    cmdline = (
        f"console=ttyS0 quiet reboot=k panic=1 svbench.runs={a.runs} svbench.mib={a.mib} "
        f"svbench.rand={a.rand}"
    )
    engines = a.engines.split(",")
    names = {"qemu": "qemu-microvm", "builtin": "svlaunch-builtin"}
    print(
        f"rig_blk: virtio-blk reads in L2 (busybox dd on /dev/vda, {a.disk_mib} MiB raw image in "
        f"L1 RAM, 1 vCPU, 256 MiB); {a.boots} boot(s) per engine, alternating, {a.runs} "
        "rounds each; best of all rounds (other load on the host only ever slows a round down)"
    )
    results = {eng: Result() for eng in engines}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rig-blk-") as tmp:
        manifest = Path(tmp) / "bench.toml"
        manifest.write_text(manifest_text(initrd, disk, cmdline))
        for i in range(a.boots):
            for eng in engines:
                res = run_engine(eng, manifest, a.timeout)
                acc = results[eng]
                acc.seq1m_mib_s += res.seq1m_mib_s
                acc.seq4k_iops += res.seq4k_iops
                acc.rand4k_iops += res.rand4k_iops
                acc.rand4k_raw_iops += res.rand4k_raw_iops
                seq = ", ".join(f"{x:.0f}" for x in res.seq1m_mib_s) or "-"
                line = f"  boot {i + 1} {names.get(eng, eng):18s} seq 1M MiB/s per round: {seq}"
                if res.inner_s is not None:
                    line += f" (boot+run {res.inner_s:.1f} s)"
                print(line, flush=True)
                if res.error:
                    failed += 1
                    print(f"    FAILED: {res.error}")
    print(
        f"{'engine':18s} {'seq 1M MiB/s':>12s} {'seq 4K IOPS':>12s} {'rand 4K IOPS':>12s} "
        f"{'(raw, w/ dd spawn)':>18s}"
    )
    for eng in engines:
        r = results[eng]
        print(
            f"{names.get(eng, eng):18s} {best(r.seq1m_mib_s):>12s} {best(r.seq4k_iops):>12s} "
            f"{best(r.rand4k_iops):>12s} {best(r.rand4k_raw_iops):>18s}"
        )
    q, b = results.get("qemu"), results.get("builtin")
    if q and b and q.seq1m_mib_s and b.seq1m_mib_s:
        ratio = max(b.seq1m_mib_s) / max(q.seq1m_mib_s)
        verdict = "meets" if ratio >= 0.8 else "below"
        print(f"builtin / qemu, sequential 1 MiB reads: {ratio:.2f} ({verdict} the 0.8 goal)")
        for label, bx, qx in (
            ("sequential 4 KiB", b.seq4k_iops, q.seq4k_iops),
            ("random 4 KiB", b.rand4k_iops, q.rand4k_iops),
        ):
            if bx and qx:
                print(f"builtin / qemu, {label} reads: {max(bx) / max(qx):.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
