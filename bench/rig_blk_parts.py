"""What bench/rig_blk.py puts into the rig: the guest's init, fio's job file, the disk images,
the two VMMs' command lines, and the parsing of what comes back.

The guest is the test guest (scripts/build-guest: Debian's cloud kernel, busybox) with this /init
appended to its initrd; Debian's fio comes from build/guest/tools.ext4 (scripts/guest_tools.py),
attached as a second read-only drive. The data disk is a raw image inside an ext4 file system
that L1 loop-mounts (L1 holds it in RAM): ext4 takes O_DIRECT, so ``direct = true`` (the
StratoVirt default, and what aio=native needs) reaches the loop device without L1's page cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "build" / "guest"
WORK = REPO / "build" / "rig-blk"
MOUNT = "/mnt/rig-blk"  # where L1 mounts the ext4 image holding the data disk
sys.path.insert(0, str(REPO / "scripts"))

from rig_cpio import CpioWriter  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class Job:
    """One fio job: ``rw`` (read, write, randread, randwrite), block size, queue depth."""

    rw: str
    bs: str
    qd: int
    fsync: bool = False

    @property
    def name(self) -> str:
        return f"{self.rw}-{self.bs}-qd{self.qd}" + ("-fsync" if self.fsync else "")

    @property
    def label(self) -> str:
        kind = {"read": "seq read", "write": "seq write"}.get(self.rw, self.rw)
        extra = ", fsync each" if self.fsync else ""
        return f"{kind} {self.bs.upper()[:-1] + self.bs[-1:].upper()}iB QD{self.qd}{extra}"

    @property
    def unit(self) -> str:
        return "MiB/s" if self.bs == "1m" else "IOPS"

    def section(self, runtime: int, ramp: int) -> str:
        """The job's section of fio's job file (one after the other: stonewall)."""
        engine = "psync" if self.fsync else "libaio"
        lines = [f"[{self.name}]", "stonewall", f"rw={self.rw}", f"bs={self.bs}"]
        lines += [f"iodepth={self.qd}", f"ioengine={engine}", f"runtime={runtime}"]
        lines += [f"ramp_time={ramp}"]
        if self.fsync:
            lines.append("fsync=1")
        return "\n".join(lines) + "\n"


#: the issue's matrix: random and sequential, 4 KiB and 1 MiB, QD 1 and 32, read and write,
#: and random 4 KiB writes with an fsync after each (fio's fsync=1: a FLUSH per write)
JOBS = [
    Job(rw, bs, qd)
    for rw in ("randread", "read", "randwrite", "write")
    for bs in ("4k", "1m")
    for qd in (1, 32)
] + [Job("randwrite", "4k", 1, fsync=True)]
#: the goals: builtin >= 1.0 x QEMU on these
GOALS = {
    "randread-4k-qd1",
    "randread-4k-qd32",
    "read-4k-qd1",
    "read-1m-qd1",
    "randwrite-4k-qd1-fsync",
}


def job_file(jobs: list[Job], runtime: int, ramp: int) -> str:
    head = "[global]\nfilename=${SVDEV}\ndirect=1\ntime_based\nthread\nnorandommap\n"
    head += "randrepeat=0\ngroup_reporting=0\n\n"
    return head + "\n".join(j.section(runtime, ramp) for j in jobs)


BENCH_INIT = r"""#!/bin/sh
# bench/rig_blk.py's guest init (replaces the test guest's /init): fio from the tools disk on
# the data disk, one SVBENCH line per job, then power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/svreport-modules); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
out() { echo "SVBENCH $*"; }
data= tools=
for b in /sys/block/vd*; do
	case $(cat $b/serial 2>/dev/null) in svdata) data=${b##*/} ;; svtools) tools=${b##*/} ;; esac
done
mkdir -p /tools
if [ -z "$data" ] || [ -z "$tools" ] || ! mount -t ext4 -o ro /dev/$tools /tools; then
	out "error no data or tools disk (data=$data tools=$tools)"
else
	q=/sys/block/$data/queue
	out "setup dev=$data sectors=$(cat /sys/block/$data/size) fio=$(/tools/bin/fio --version) sched=$(cat $q/scheduler | tr ' ' ,) nr_requests=$(cat $q/nr_requests) wc=$(cat $q/write_cache | tr ' ' _)"
	SVDEV=/dev/$data /tools/bin/fio --output-format=terse --terse-version=3 /etc/svbench.fio 2>&1 |
		awk -F';' 'NF > 80 {print "SVBENCH job=" $3 " err=" $5 " rkb=" $6 " rbw=" $7 " riops=" $8 " rlat=" $40 " wkb=" $47 " wbw=" $48 " wiops=" $49 " wlat=" $81; next} {print "fio: " $0}'
fi
out done
sync
if grep -qs _S5_ /sys/firmware/acpi/tables/DSDT; then poweroff -f; fi
reboot -f
"""


def bench_initrd(dest: Path, fio_jobs: str) -> Path:
    """The test guest's initrd with our /init and job file appended (later entries win)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write((GUEST / "initrd.img").read_bytes())
        w = CpioWriter(out)
        w.file("init", BENCH_INIT.encode(), 0o755)
        w.file("etc/svbench.fio", fio_jobs.encode(), 0o644)
        w.close()
    os.replace(tmp, dest)
    return dest


def data_image(mib: int) -> Path:
    """An ext4 image holding ``disk.img``, ``mib`` MiB of random bytes (cached by size)."""
    img = WORK / f"ext4-{mib}m.img"
    if img.exists():
        return img
    WORK.mkdir(parents=True, exist_ok=True)
    stage = WORK / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    with open(stage / "disk.img", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    tmp = img.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    cmd = [
        "mke2fs",
        "-q",
        "-t",
        "ext4",
        "-d",
        str(stage),
        "-F",
        str(tmp),
        f"{mib + mib // 8 + 16}M",
    ]
    subprocess.run(cmd, check=True)
    shutil.rmtree(stage)
    os.replace(tmp, img)
    return img


def loop_module() -> Path:
    """loop.ko of the guest kernel's package (L1 runs the same kernel and lacks the module)."""
    dest = WORK / "loop.ko"
    version = (GUEST / "kernel-version").read_text().strip()
    if dest.exists() and dest.with_suffix(".version").read_text() == version:
        return dest
    found = sorted(
        (REPO / "build" / "debs" / "x").glob(
            f"linux-image-{version}_*/lib/modules/*/kernel/drivers/block/loop.ko*"
        )
    )
    if not found:
        raise SystemExit(
            f"rig_blk: loop.ko of {version} not found under build/debs (run scripts/build-guest)"
        )
    ko = found[0]
    data = ko.read_bytes()
    if ko.suffix in (".xz", ".zst"):
        tool = ["xz", "-dc"] if ko.suffix == ".xz" else ["zstd", "-dcq"]
        data = subprocess.run([*tool, str(ko)], check=True, capture_output=True).stdout
    WORK.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    dest.with_suffix(".version").write_text(version)
    return dest


@dataclass(frozen=True)
class Setup:
    """One configuration both VMMs run: the builtin engine's drive options and QEMU's."""

    aio: str
    direct: bool
    iothread: bool = False
    queue_size: int = 256

    @property
    def qemu_drive(self) -> str:
        cache = "cache.direct=on" if self.direct else "cache.direct=off"
        aio = self.aio if self.aio != "off" else "threads"
        return f"{cache},aio={aio}"


def manifest_text(s: Setup, kernel: Path, initrd: Path, tools: Path, cmdline: str) -> str:
    io = 'iothreads = ["io0"]\n' if s.iothread else ""
    drive_io = 'iothread = "io0"\n' if s.iothread else ""
    return (
        f'name = "rig-blk-{s.aio}"\nserial = "stdio"\n{io}\n[machine]\ntype = "microvm"\n\n'
        '[cpu]\ncpus = 1\n\n[memory]\nsize = "256M"\n\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "{cmdline}"\n\n'
        f'[drives.data]\nfile = "{MOUNT}/disk.img"\nserial = "svdata"\n'
        f'direct = {str(s.direct).lower()}\naio = "{s.aio}"\nqueue-size = {s.queue_size}\n{drive_io}\n'
        f'[drives.tools]\nfile = "{tools}"\nserial = "svtools"\nreadonly = true\ndirect = false\n'
    )


def qemu_argv(s: Setup, kernel: Path, initrd: Path, tools: Path, cmdline: str) -> list[str]:
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host"]
    argv += ["-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config", "-nographic"]
    argv += ["-no-reboot", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd)]
    argv += ["-append", cmdline]
    dev_io = ""
    if s.iothread:
        argv += ["-object", "iothread,id=io0"]
        dev_io = ",iothread=io0"
    argv += ["-drive", f"id=data,file={MOUNT}/disk.img,format=raw,if=none,{s.qemu_drive}"]
    argv += [
        "-device",
        f"virtio-blk-device,drive=data,serial=svdata,queue-size={s.queue_size}{dev_io}",
    ]
    argv += ["-drive", f"id=tools,file={tools},format=raw,if=none,readonly=on"]
    argv += ["-device", "virtio-blk-device,drive=tools,serial=svtools"]
    return argv


@dataclass
class JobResult:
    value: float  # IOPS or MiB/s
    lat_us: float


def parse(text: str, jobs: list[Job]) -> tuple[dict[str, JobResult], dict[str, str], list[str]]:
    """(job name -> result, the setup line's fields, error lines) of one VMM run."""
    by_name = {j.name: j for j in jobs}
    results: dict[str, JobResult] = {}
    setup: dict[str, str] = {}
    errors: list[str] = []
    for line in text.splitlines():
        if line.startswith("fio: ") and line.strip() != "fio:":
            errors.append(line.strip())
        at = line.find("SVBENCH ")
        if at < 0:
            continue
        words = line[at:].split()[1:]
        kind = words[0] if words and "=" not in words[0] else "job"
        f = dict(w.partition("=")[::2] for w in words if "=" in w)
        if kind == "error":
            errors.append(line[at:].strip())
            continue
        if kind == "setup":
            setup = f
            continue
        job = by_name.get(f.get("job", ""))
        if kind != "job" or job is None:
            continue
        if f.get("err", "0") != "0":
            errors.append(f"{job.name}: fio error {f['err']}")
            continue
        write = job.rw in ("write", "randwrite")
        p = "w" if write else "r"
        iops, kib_s, lat = float(f[f"{p}iops"]), float(f[f"{p}bw"]), float(f[f"{p}lat"])
        value = kib_s / 1024 if job.unit == "MiB/s" else iops
        results[job.name] = JobResult(value, lat)
    return results, setup, errors


def py_spy() -> Path:
    """py-spy's static binary (bench/rig_net.py fetches it from its PyPI wheel), for --profile."""
    sys.path.insert(0, str(REPO / "bench"))
    from rig_net import py_spy as fetch

    return fetch()


def profile_summary(path: Path, top: int = 14) -> list[str]:
    """The functions py-spy saw most (raw collapsed stacks): samples in them and under them."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(.*/|:\d+\)$", lambda m: " (" if "/" in m[0] else ")", f)
                  for f in stack.split(";")]  # fmt: skip
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return ["no samples"]
    out = [f"{total} samples; by own samples (own/under):"]
    for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {n:6d} / {inclusive[f]:6d}  {f}")
    return out
