"""Boot time with a verbose serial console inside the nested rig: builtin engine next to QEMU.

The same VM boots under both inner VMMs on L1's KVM: the test guest (Debian's cloud kernel, the
busybox initrd whose /init prints SVREPORT lines and powers off), 1 vCPU, 256 MiB, COM1 on the
VMM's stdout. The builtin engine runs the way a user runs it (`svlaunch up MANIFEST` in the
foreground: the engine's UART, its serial socket, svlaunch's relay to the terminal); QEMU microvm
gets `-serial stdio`. Both write to the same sink (L1's second serial port, raw), and every boot
of one rig run shares one L1 (one L1 boot, engines and modes interleaved round by round).

Two console modes:

- ``verbose``: the kernel log at full verbosity (``ignore_loglevel``, ``initcall_debug``,
  ``printk.devkmsg=on``, no ratelimit) plus the test init's reports: tens of KB on ttyS0, the
  boot's whole log, as a guest with no ``quiet`` prints it;
- ``quiet``: ``quiet`` (the same boot, almost nothing on ttyS0).

The time is measured inside L1 around each VMM process (exec to exit, guest power-off included)
and the bytes are those the rig got back for that boot. Goal: builtin / QEMU <= 1.0 in the
verbose mode.

    python bench/rig_console.py [--rounds N] [--modes verbose,quiet] [--engines qemu,builtin]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "build" / "guest"
RIG = REPO / "scripts" / "rig"
CPUS, MEM_MIB = 1, 256
BASE = "console=ttyS0 reboot=k panic=1"
MODES = {
    "verbose": f"{BASE} ignore_loglevel initcall_debug printk.devkmsg=on",
    "quiet": f"{BASE} quiet",
}
ENGINES = {"qemu": "qemu-microvm", "builtin": "svlaunch-builtin"}
#: L1's clock around one VMM; prints "SVTIME <label> <seconds> <rc>" on L1's console (stderr).
TIMER = (
    "import subprocess, sys, time; t = time.monotonic(); rc = subprocess.call(sys.argv[2:]); "
    "print('SVTIME', sys.argv[1], round(time.monotonic() - t, 3), rc, file=sys.stderr, flush=True)"
)
MARK = re.compile(rb"SVCON-(start|end) (\S+)")
TIME = re.compile(r"SVTIME (\S+) ([\d.]+) (-?\d+)")


def manifest_text(kernel: Path, initrd: Path, cmdline: str) -> str:
    return (
        f'name = "rig-console-bench"\nserial = "stdio"\n\n[machine]\ntype = "microvm"\n\n'
        f'[cpu]\ncpus = {CPUS}\n\n[memory]\nsize = "{MEM_MIB}M"\n\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "{cmdline}"\n'
    )


def qemu_argv(kernel: Path, initrd: Path, cmdline: str) -> list[str]:
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host"]
    argv += ["-smp", str(CPUS), "-m", f"{MEM_MIB}M", "-nodefaults", "-no-user-config"]
    argv += ["-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel)]
    return [*argv, "-initrd", str(initrd), "-append", cmdline]


def boot_command(label: str, argv: list[str]) -> str:
    """One boot in L1: a marker on the VMM's stdout before and after, timed by L1's clock."""
    timed = shlex.join(["python3", "-c", TIMER, label, *argv])
    return f"echo SVCON-start {label}; {timed} </dev/null; echo; echo SVCON-end {label}"


def split_output(stdout: bytes) -> dict[str, int]:
    """Bytes of VMM output per boot label (between its markers, the markers' lines excluded)."""
    sizes: dict[str, int] = {}
    start: dict[str, int] = {}
    for m in MARK.finditer(stdout):
        kind, label = m.group(1).decode(), m.group(2).decode()
        if kind == "start":
            start[label] = m.end() + 1  # the marker's newline
        elif label in start:
            sizes[label] = max(0, m.start() - start.pop(label) - 1)  # the `echo` newline
    return sizes


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"host: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
        f"load average {load} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


def code_version() -> str:
    """The commit the engine and launcher come from (and whether they differ from it)."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "engine", "launcher"], capture_output=True, text=True
    )
    line = head.stdout.strip()[:90] or "unknown (not a git checkout)"
    return line + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="boots per engine and mode")
    p.add_argument("--modes", default="verbose,quiet")
    p.add_argument("--engines", default="qemu,builtin")
    p.add_argument("--kernel", choices=("vmlinuz", "vmlinux"), default="vmlinuz")
    p.add_argument("--timeout", type=float, default=3000, help="seconds for the whole rig run")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    engines = [e for e in a.engines.split(",") if e]
    for name, known in (("mode", MODES), ("engine", ENGINES)):
        bad = [x for x in (modes if name == "mode" else engines) if x not in known]
        if bad:
            p.error(f"unknown {name} {', '.join(bad)} (choose from {', '.join(known)})")
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True, stdout=subprocess.DEVNULL)
    kernel, initrd = GUEST / a.kernel, GUEST / "initrd.img"
    version = (GUEST / "kernel-version").read_text().strip()
    print("rig_console: boot time with the serial console on, builtin engine vs QEMU microvm")
    print(machine_line())
    print(f"code: {code_version()}")
    print(
        f"guest: Linux {version} ({a.kernel}), the test initrd (busybox /init, SVREPORT lines), "
        f"{CPUS} vCPU, {MEM_MIB} MiB; COM1 -> the VMM's stdout -> L1's ttyS1 (raw)"
    )
    print(
        "rig: L1 = QEMU TCG, 1 vCPU, nested SVM; builtin = `svlaunch up MANIFEST` (foreground "
        "relay), qemu = `qemu-system-x86_64 -M microvm,acpi=on -serial stdio`"
    )
    for mode in modes:
        print(f"cmdline {mode}: {MODES[mode]}")
    print(f"{a.rounds} round(s), engines and modes interleaved in one L1 run", flush=True)

    with tempfile.TemporaryDirectory(prefix="rig-console-") as tmp:
        manifests = {}
        for mode in modes:
            path = Path(tmp) / f"{mode}.toml"
            path.write_text(manifest_text(kernel, initrd, MODES[mode]))
            manifests[mode] = path
        steps, files = [], [str(kernel), str(initrd), *map(str, manifests.values())]
        for r in range(a.rounds):
            for mode in modes:
                for eng in engines if r % 2 == 0 else engines[::-1]:
                    if eng == "builtin":
                        cmd = ["python3", "-m", "launcher.cli", "up", str(manifests[mode])]
                    else:
                        cmd = qemu_argv(kernel, initrd, MODES[mode])
                    steps.append(boot_command(f"{eng}.{mode}.{r}", cmd))
        rig = [sys.executable, str(RIG), "--l2-cmd", "; ".join(steps), "--timeout", str(a.timeout)]
        for f in files:
            rig += ["--file", f]
        if "qemu" in engines:
            rig.append("--qemu")
        proc = subprocess.run(rig, capture_output=True, cwd=REPO)
    err = proc.stderr.decode(errors="replace")
    sizes = split_output(proc.stdout)
    times: dict[tuple[str, str], list[float]] = {}
    nbytes: dict[tuple[str, str], list[int]] = {}
    failed = 0
    for m in TIME.finditer(err):
        label, secs, rc = m.group(1), float(m.group(2)), int(m.group(3))
        eng, mode, _r = label.split(".")
        if rc != 0:
            print(f"  {label}: FAILED (exit {rc})")
            failed += 1
            continue
        times.setdefault((eng, mode), []).append(secs)
        nbytes.setdefault((eng, mode), []).append(sizes.get(label, -1))
        print(f"  {label:22s} {secs:7.2f} s  {sizes.get(label, -1):7d} bytes on ttyS0", flush=True)
    expected = a.rounds * len(modes) * len(engines)
    if sum(len(v) for v in times.values()) + failed < expected:
        tail = "\n  ".join(err.strip().splitlines()[-12:])
        print(f"rig run incomplete (exit {proc.returncode}):\n  {tail}")
        failed += 1

    print(f"\n{'mode':8s} {'bytes':>7s} {'qemu s':>14s} {'builtin s':>14s} {'builtin/qemu':>14s}")
    print(f"{'':8s} {'':>7s} {'median  best':>14s} {'median  best':>14s} {'median  best':>14s}")
    for mode in modes:
        q, b = times.get(("qemu", mode)), times.get(("builtin", mode))
        counts = nbytes.get(("builtin", mode)) or nbytes.get(("qemu", mode)) or [0]
        cells = [
            f"{statistics.median(x):7.2f} {min(x):6.2f}" if x else f"{'-':>14s}" for x in (q, b)
        ]
        ratio = ""
        if q and b:
            med, best = statistics.median(b) / statistics.median(q), min(b) / min(q)
            ratio = f"{med:7.2f} {best:6.2f}"
        print(f"{mode:8s} {max(counts):7d} {cells[0]} {cells[1]} {ratio:>14s}")
    print(
        "(median and best over the rounds; other load on the host only ever slows a boot down; "
        "bytes: the most one boot printed; goal: verbose builtin/qemu <= 1.00)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
