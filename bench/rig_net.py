"""virtio-net TCP throughput and round trip inside the nested rig: builtin engine next to QEMU.

One L1 boot runs every VM one after the other, alternating engines and backends, so paired runs
are minutes apart on the same (shared, noisy) host:

- backends: ``tap`` (the VMM's own tap path: the builtin engine's Python data path, QEMU's
  userspace virtio-net) and ``vhost`` (``/dev/vhost-net`` in L1 serves the rings for both);
- engines: ``svlaunch up`` with the builtin engine, and QEMU microvm (``-netdev tap,vhost=on|off
  -device virtio-net-device``), the same kernel, initrd, command line, 1 vCPU, 256 MiB;
- L1 owns ``tap0`` (169.254.12.1/24) and runs ``iperf3 -s``; the guest is 169.254.12.2.

Inside L2 (the test guest's initrd, whose /init is replaced by a small script, and the guest's
tools disk ``build/guest/tools.ext4``, read-only, with Debian's iperf3 at /tools/bin/iperf3):

- ``rtt``: ``ping -A -c N`` (busybox: the next echo leaves as soon as the reply arrives, one
  request in flight, like netperf's TCP_RR but answered by L1's kernel): mean round trip, us.
  Why not netperf: Debian ships it in non-free only; why ICMP: the L1 side of a TCP round trip
  would be a userspace server running under TCG, whose noise would drown the VMM's share.
- ``tx`` / ``rx``: ``iperf3 -c`` guest→L1 and L1→guest (``-R``), 1 and ``--streams`` parallel
  TCP streams, the first second omitted: receiver Mbit/s.

Everything runs under TCG, so absolute numbers are far below bare metal; the ratio between the
engines on the same backend is the point (goals: tap ≥ 0.5× QEMU, vhost ≥ 1.0× QEMU).

    python bench/rig_net.py [--rounds N] [--secs S] [--streams P] [--pings N]
                            [--backends tap,vhost] [--l1-cpus N] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "build" / "guest"
WORK = REPO / "build" / "rig-net"
TOOLS = GUEST / "tools.ext4"  # scripts/build-guest: Debian's fio and iperf3 with their libraries
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests" / "support"))

from rig_cpio import CpioWriter  # noqa: E402
from rig_debs import unpack  # noqa: E402
from rigutil import qemu_microvm_cmd, run_rig_boots, svlaunch_up_cmd  # noqa: E402

HOST_ADDR, GUEST_ADDR, MAC = "169.254.12.1", "169.254.12.2", "52:54:00:12:0c:02"
#: iperf3 for L1 (its libc and libssl are already in the L1 image): binary and two libraries.
L1_IPERF_DEBS = ["iperf3", "libiperf0", "libsctp1"]
BENCH_INIT = r"""#!/bin/sh
# bench/rig_net.py's guest init (replaces the test guest's /init): ping and iperf3 against L1,
# SVBENCH lines, power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/svreport-modules); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
mkdir -p /tools && mount -t ext4 -o ro /dev/vda /tools || echo "SVBENCH error no-tools-disk"
arg() { for a in $(cat /proc/cmdline); do case $a in "svbench.$1="*) echo "${a#*=}"; return ;; esac; done; echo "$2"; }
out() { echo "SVBENCH $*"; }
peer=$(arg peer 169.254.12.1); addr=$(arg addr 169.254.12.2/24)
secs=$(arg secs 5); streams=$(arg streams 4); pings=$(arg pings 500)
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set lo up
ip addr add "$addr" dev "$nic" && ip link set "$nic" up
dev=/sys/class/net/$nic/device
out "setup nic=$nic driver_features=$(cat $dev/features) mtu=$(cat /sys/class/net/$nic/mtu) kernel=$(uname -r) queues=$(ls /sys/class/net/$nic/queues | tr '\n' ,)"
i=0
until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 20 ] || break; done
ping -A -q -c "$pings" "$peer" 2>&1 | awk -v n="$pings" '/packets/ {rx=$4} /round-trip/ {split($4, t, "/"); print "SVBENCH rtt n=" n " received=" rx " min_us=" t[1] * 1000 " avg_us=" t[2] * 1000 " max_us=" t[3] * 1000}'
tcp() {
	/tools/bin/iperf3 -c "$peer" -t "$secs" -O 1 -i 0 -f m -P "$2" $3 >/tmp/iperf 2>&1
	v=$(awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") v = $(i - 1)} END {print v}' /tmp/iperf)
	rt=$(awk '/sender/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") r = $(i + 1)} END {print r}' /tmp/iperf)
	if [ -n "$v" ]; then out "tcp dir=$1 streams=$2 mbit=$v retr=${rt:--}"; else out "tcp dir=$1 streams=$2 error=$(tail -n 1 /tmp/iperf | tr ' ' _)"; fi
}
for p in 1 "$streams"; do tcp tx "$p" ""; tcp rx "$p" -R; done
out done
if grep -qs _S5_ /sys/firmware/acpi/tables/DSDT; then poweroff -f; fi
reboot -f
"""
NAMES = {"builtin": "svlaunch builtin", "qemu": "QEMU microvm"}


def bench_initrd(dest: Path) -> Path:
    """The test guest's initrd with our /init appended (a later cpio entry replaces an earlier
    one)."""
    base = (GUEST / "initrd.img").read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write(base)
        w = CpioWriter(out)
        w.file("init", BENCH_INIT.encode(), 0o755)
        w.close()
    os.replace(tmp, dest)
    return dest


def l1_iperf3() -> tuple[list[Path], str]:
    """Debian's iperf3 for L1, as rig files, and the shell that starts its server there."""
    roots = unpack(L1_IPERF_DEBS)
    libs = WORK / "l1lib"  # each library under its soname (the rig copies files, not links)
    libs.mkdir(parents=True, exist_ok=True)
    files = [roots[0] / "usr/bin/iperf3"]
    for root, soname in zip(roots[1:], ("libiperf.so.0", "libsctp.so.1"), strict=True):
        dest = libs / soname
        dest.write_bytes((root / "usr/lib/x86_64-linux-gnu" / soname).resolve().read_bytes())
        files.append(dest)
    return files, f"LD_LIBRARY_PATH={libs} {files[0]} -s -D >/dev/null 2>&1"


def py_spy() -> Path:
    """py-spy's static binary from its PyPI wheel (L1 has no pip), for --profile."""
    dest = WORK / "py-spy"
    if not dest.exists():
        wheels = WORK / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels)]
        subprocess.run([*pip, "py-spy"], check=True)
        import zipfile

        wheel = next(wheels.glob("py_spy-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith("/scripts/py-spy"))
            dest.write_bytes(z.read(name))
        dest.chmod(0o755)
    return dest


def manifest(kernel: Path, initrd: Path, cmdline: str, vhost: bool) -> str:
    """The builtin engine's VM: the tools disk first (/dev/vda), then the NIC."""
    return (
        f'name = "rig-net-{"vhost" if vhost else "tap"}"\nserial = "stdio"\n\n'
        '[machine]\ntype = "microvm"\n\n[cpu]\ncpus = 1\n\n[memory]\nsize = "256M"\n\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "{cmdline}"\n\n'
        f'[drives.tools]\nfile = "{TOOLS}"\nreadonly = true\n'
        "direct = false  # L1 keeps the run's files in its initramfs, which has no O_DIRECT\n\n"
        f'[nets.net0]\nifname = "tap0"\nmac = "{MAC}"\nvhost = {"true" if vhost else "false"}\n'
    )


def qemu_cmd(kernel: Path, initrd: Path, cmdline: str, vhost: bool) -> str:
    netdev = f"tap,id=n0,ifname=tap0,script=no,downscript=no,vhost={'on' if vhost else 'off'}"
    extra = ["-drive", f"id=tools,file={TOOLS},format=raw,if=none,readonly=on"]
    extra += ["-device", "virtio-blk-device,drive=tools"]
    extra += ["-netdev", netdev, "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]
    return qemu_microvm_cmd(kernel, initrd, cmdline, extra=extra)


@dataclass
class Runs:
    """One engine+backend's measurements over all rounds."""

    rtt_us: list[float] = field(default_factory=list)
    mbit: dict[str, list[float]] = field(default_factory=dict)  # "tx 1" -> Mbit/s per round
    setup: str = ""
    retr: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


LINE = re.compile(r"SVBENCH (\S+) ?(.*?)\r?$")


def parse(stdout: str, runs: Runs, label: str) -> None:
    seen_done = False
    for line in stdout.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        kind, rest = m.group(1), m.group(2)
        f = dict(w.partition("=")[::2] for w in rest.split())
        if kind == "setup":
            runs.setup = rest
        elif kind == "rtt" and "avg_us" in f:
            runs.rtt_us.append(float(f["avg_us"]))
        elif kind == "tcp" and "mbit" in f:
            runs.mbit.setdefault(f"{f['dir']} {f['streams']}", []).append(float(f["mbit"]))
            runs.retr.append(f"{f['dir']}x{f['streams']}={f.get('retr', '-')}")
        elif kind == "tcp":
            runs.errors.append(f"{label}: iperf3 {f.get('dir')} -P {f.get('streams')}: {f}")
        elif kind == "done":
            seen_done = True
    if not seen_done:
        tail = "\n    ".join(stdout.strip().splitlines()[-6:])
        runs.errors.append(f"{label}: no 'SVBENCH done'\n    {tail}")


def fmt(xs: list[float], spec: str = ".0f") -> str:
    if not xs:
        return "-"
    return f"{min(xs):{spec}}/{statistics.median(xs):{spec}}"


def ratio(b: list[float], q: list[float], lower_is_better: bool = False) -> str:
    if not b or not q:
        return "-"
    mb, mq = statistics.median(b), statistics.median(q)
    return f"{(mq / mb if lower_is_better else mb / mq):.2f}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="boots per engine and backend")
    p.add_argument("--secs", type=int, default=5, help="seconds per iperf3 run (+1 omitted)")
    p.add_argument("--streams", type=int, default=4, help="parallel streams of the second run")
    p.add_argument("--pings", type=int, default=500, help="echo requests for the round trip")
    p.add_argument("--backends", default="tap,vhost")
    p.add_argument("--engines", default="builtin,qemu")
    p.add_argument("--l1-cpus", type=int, default=1, help="vCPUs of the TCG L1 guest")
    p.add_argument("--timeout", type=float, default=3000)
    p.add_argument("--out", type=Path, help="also write the report to this file")
    p.add_argument(
        "--exit-stats",
        action="store_true",
        help="run the builtin engine with SVLAUNCH_EXIT_STATS=1 (its vCPU exits, in "
        f"{WORK.relative_to(REPO)}/last-run.log)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="run the builtin engine under py-spy (PyPI) in L1: collapsed stacks per boot in "
        f"{WORK.relative_to(REPO)}/profile-*.txt, and SVLAUNCH_EXIT_STATS=1 (in "
        f"{WORK.relative_to(REPO)}/last-run.log); the sampling slows the builtin runs, so "
        "their numbers are not comparable",
    )
    a = p.parse_args(argv)
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    kernel = GUEST / "vmlinuz"
    if not TOOLS.exists():
        p.error(f"{TOOLS} is missing: scripts/build-guest makes it (the guest's iperf3)")
    initrd = bench_initrd(WORK / "initrd-bench.img")
    cmdline = (
        f"console=ttyS0 quiet reboot=k panic=1 svbench.peer={HOST_ADDR} "
        f"svbench.addr={GUEST_ADDR}/24 svbench.secs={a.secs} svbench.streams={a.streams} "
        f"svbench.pings={a.pings}"
    )
    l1_files, iperf_server = l1_iperf3()
    writeback: list[Path] = []
    pyspy = py_spy() if a.profile else None
    if pyspy is not None:
        l1_files.append(pyspy)
    backends, engines = a.backends.split(","), a.engines.split(",")
    setup = (
        f"ip tuntap add tap0 mode tap && ip addr add {HOST_ADDR}/24 dev tap0 && "
        f"ip link set tap0 up && {iperf_server}"
    )
    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    with tempfile.TemporaryDirectory(prefix="rig-net-", dir=WORK) as tmp:
        boots: list[tuple[str, str]] = []
        files: list[Path] = [kernel, initrd, TOOLS, *l1_files]
        commands: dict[str, str] = {}
        for backend in backends:
            vhost = backend == "vhost"
            m = Path(tmp) / f"net-{backend}.toml"
            m.write_text(manifest(kernel, initrd, cmdline, vhost))
            files.append(m)
            commands[f"builtin-{backend}"] = svlaunch_up_cmd(m)
            commands[f"qemu-{backend}"] = qemu_cmd(kernel, initrd, cmdline, vhost)
        # Warm L1 up first (imports and page cache under TCG): `svlaunch up` gives the engine 30 s
        # to answer on QMP, which a cold first start on a loaded host can miss.
        boots.append(("warm-up", f"python3 -m launcher.cli plan {files[-1]} >/dev/null"))
        for r in range(a.rounds):
            for backend in backends:
                order = engines if r % 2 == 0 else engines[::-1]
                for e in order:
                    label = f"{e}-{backend}-{r}"
                    cmd = commands[f"{e}-{backend}"]
                    if (a.exit_stats or pyspy is not None) and e == "builtin":
                        # The engine itself, its stderr (SVLAUNCH_EXIT_STATS) into the log;
                        # py-spy, if asked for, samples gently: it shares L1's one CPU with
                        # everything it measures.
                        manifest_path = shlex.split(cmd)[-1]
                        plan = f"/tmp/plan-{label}.json"
                        engine = f"python3 -m engine run --plan {plan} 2>&1"
                        if pyspy is not None:
                            prof = WORK / f"profile-{label}.txt"
                            prof.write_text("")
                            writeback.append(prof)
                            engine = (
                                f"{pyspy} record --nonblocking -r 20 -f raw -o {prof} -- {engine}"
                            )
                        cmd = (
                            f"python3 -m launcher.cli plan {manifest_path} > {plan} && "
                            f"SVLAUNCH_EXIT_STATS=1 {engine}"
                        )
                    boots.append((label, cmd))
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        load = os.getloadavg()
        say(f"rig_net: virtio-net in the nested rig, {when}")
        say(
            f"host: {platform.node()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
            f"{load[1]:.2f} {load[2]:.2f} at the start (the cores are shared; other load only "
            "ever slows a run down)"
        )
        say(
            f"L1: QEMU TCG, {a.l1_cpus} vCPU(s), tap0 {HOST_ADDR}/24, Debian iperf3 -s; "
            f"L2: {(GUEST / 'kernel-version').read_text().strip()}, 1 vCPU, 256 MiB, "
            f"guest {GUEST_ADDR}"
        )
        say(f"guest command line: {cmdline}")
        for key, cmd in commands.items():
            say(f"{key}: {cmd if key.startswith('qemu') else cmd + ' with:'}")
            if key.startswith("builtin"):
                text = (Path(tmp) / f"net-{key.split('-', 1)[1]}.toml").read_text()
                devices = text[text.index("[drives.tools]") :].strip().replace("\n", "; ")
                say(f"    {devices}")
        say(
            f"runs: {a.rounds} round(s), each backend's engines back to back, order alternating; "
            f"iperf3 -t {a.secs} -O 1 with 1 and {a.streams} streams; ping -A -c {a.pings}"
        )
        whole, results = run_rig_boots(
            boots,
            files=files,
            writeback=writeback,
            timeout=a.timeout,
            l1_setup=setup,
            l1_cpus=a.l1_cpus,
        )
    log = WORK / "last-run.log"
    log.write_text(f"--- stdout ---\n{whole.stdout}\n--- stderr ---\n{whole.stderr}")
    runs: dict[str, Runs] = {}
    for label, res in results.items():
        if label == "warm-up":
            continue
        key = label.rsplit("-", 1)[0]
        acc = runs.setdefault(key, Runs())
        parse(res.stdout, acc, label)
    failed = [e for r in runs.values() for e in r.errors]
    for key, r in runs.items():
        if r.setup:
            say(f"{key} guest: {r.setup}")
        if r.retr:
            say(f"{key} TCP retransmits per run: {r.retr}")
    columns = ["rtt", "tx 1", "rx 1", f"tx {a.streams}", f"rx {a.streams}"]
    say("")
    say("min/median over the rounds; round trip in us (lower is better), TCP in Mbit/s")
    head = f"{'backend':8s} {'engine':17s} {'round trip us':>14s}"
    for c in columns[1:]:
        d, n = c.split()
        head += f" {f'{d} x{n} Mbit/s':>15s}"
    say(head)
    for backend in backends:
        for eng in engines:
            r = runs.get(f"{eng}-{backend}", Runs())
            line = f"{backend:8s} {NAMES.get(eng, eng):17s} {fmt(r.rtt_us):>14s}"
            for c in columns[1:]:
                line += f" {fmt(r.mbit.get(c, [])):>15s}"
            say(line)
        b, q = runs.get(f"builtin-{backend}", Runs()), runs.get(f"qemu-{backend}", Runs())
        line = f"{backend:8s} {'builtin / QEMU':17s} {ratio(b.rtt_us, q.rtt_us, True):>14s}"
        for c in columns[1:]:
            line += f" {ratio(b.mbit.get(c, []), q.mbit.get(c, [])):>15s}"
        say(line)
    say(
        "ratios: medians, builtin over QEMU (round trip: QEMU's time over the builtin's, so "
        "above 1 is better for the builtin everywhere); goals: tap >= 0.5, vhost >= 1.0"
    )
    say("scripts/readme-numbers reads these (medians):")
    keys = {"rtt": None, "tx1": "tx 1", "rx1": "rx 1", "txN": f"tx {a.streams}"}
    keys["rxN"] = f"rx {a.streams}"
    for backend in backends:
        b, q = runs.get(f"builtin-{backend}", Runs()), runs.get(f"qemu-{backend}", Runs())
        for measure, col in keys.items():
            bx = b.rtt_us if col is None else b.mbit.get(col, [])
            qx = q.rtt_us if col is None else q.mbit.get(col, [])
            if bx and qx:
                say(
                    f"RESULT rig_net backend={backend} measure={measure} streams={a.streams} "
                    f"builtin={statistics.median(bx):.0f} qemu={statistics.median(qx):.0f} "
                    f"ratio={ratio(bx, qx, col is None)}"
                )
    load = os.getloadavg()
    say(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    say("")
    say("per boot (label: the guest's SVBENCH lines):")
    for label, res in results.items():
        for line in res.stdout.splitlines():
            m = LINE.search(line)
            if m and m.group(1) in ("rtt", "tcp"):
                say(f"  {label}: {m.group(1)} {m.group(2)}")
    if whole.returncode != 0:
        failed.append(f"rig exit {whole.returncode}")
    for e in failed:
        say(f"FAILED: {e}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(report) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
