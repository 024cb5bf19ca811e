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

``--engines qemu,builtin,engine`` adds the engine alone (``python -m engine run --plan``, its
serial on its own stdout): the builtin boot without svlaunch's relay, to see what the relay
costs. ``--exit-stats`` adds one more verbose boot of the engine alone, not counted, with
``SVLAUNCH_EXIT_STATS=1``: its vCPU exits by port and what each cost, and the chardev's writes
(docs/console.md), printed under the tables. ``RESULT`` lines at the end feed
``scripts/readme-numbers``.
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.__main__ import cpu_model  # noqa: E402
from bench._result import result  # noqa: E402

GUEST = REPO / "build" / "guest"
RIG = REPO / "scripts" / "rig"
CPUS, MEM_MIB = 1, 256
BASE = "console=ttyS0 reboot=k panic=1"
MODES = {
    "verbose": f"{BASE} ignore_loglevel initcall_debug printk.devkmsg=on",
    "quiet": f"{BASE} quiet",
}
#: each engine's name in RESULT lines (rig_boot's names)
ENGINES = {
    "qemu": "qemu-microvm",
    "builtin": "svlaunch-builtin",
    "engine": "svlaunch-engine",  # `python -m engine run --plan`: its stdio serial, no relay
}
#: L1's clock around one VMM; prints "SVTIME <label> <seconds> <rc>" on L1's console (stderr).
TIMER = (
    "import subprocess, sys, time; t = time.monotonic(); rc = subprocess.call(sys.argv[2:]); "
    "print('SVTIME', sys.argv[1], round(time.monotonic() - t, 3), rc, file=sys.stderr, flush=True)"
)
MARK = re.compile(rb"SVCON-(start|end) (\S+)\r?\n")  # whole lines only (output streams in)
TIME = re.compile(r"SVTIME (\S+) ([\d.]+) (-?\d+)")
PRINTK_TIME = re.compile(rb"^\[\s*(\d+\.\d+)\]", re.M)
OUTPUT = REPO / "build" / "rig-console" / "last-run.out"  # the rig's stdout, every boot's log


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


def split_output(stdout: bytes) -> dict[str, bytes]:
    """VMM output per boot label (between its markers, the markers' lines excluded)."""
    parts: dict[str, bytes] = {}
    start: dict[str, int] = {}
    for m in MARK.finditer(stdout):
        kind, label = m.group(1).decode(), m.group(2).decode()
        if kind == "start":
            start[label] = m.end()
        elif label in start:
            parts[label] = stdout[start.pop(label) : max(0, m.start() - 1)]  # the `echo` newline
    return parts


def guest_seconds(output: bytes) -> float | None:
    """The guest kernel's last printk timestamp: its own view of how long it ran."""
    stamps = PRINTK_TIME.findall(output)
    return float(stamps[-1]) if stamps else None


def plan_file(manifest: Path) -> Path:
    """`svlaunch plan MANIFEST` next to the manifest (what the engine alone runs)."""
    py = REPO / ".venv" / "bin" / "python"
    out = subprocess.run(
        [str(py if py.exists() else sys.executable), "-m", "launcher.cli", "plan", str(manifest)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    path = manifest.with_suffix(".json")
    path.write_text(out)
    return path


def l1_cpu_seconds(rig_pid: int) -> float | None:
    """User+system CPU time the rig's L1 QEMU (the rig's child) has used on the host so far."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == rig_pid and "(qemu-system" in stat:
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def run_rig(argv: list[str]) -> tuple[int, bytes, str, dict[str, float]]:
    """Run the rig; returns its exit status, stdout, stderr and each boot's host CPU seconds
    (sampled as the boot's markers stream by)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    out = bytearray()
    started: dict[str, float] = {}
    cpu: dict[str, float] = {}
    scanned = 0
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        out += chunk
        for m in MARK.finditer(out, max(0, scanned - 64)):
            kind, label = m.group(1).decode(), m.group(2).decode()
            if (kind == "start" and label in started) or label in cpu:
                continue
            now = l1_cpu_seconds(proc.pid)
            if now is None:
                continue
            if kind == "start":
                started[label] = now
            elif label in started:
                cpu[label] = now - started[label]
        scanned = len(out)
    proc.wait()
    reader.join()
    return proc.returncode, bytes(out), b"".join(err).decode(errors="replace"), cpu


def machine_line() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"host: {cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
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
    p.add_argument(
        "--exit-stats",
        action="store_true",
        help="one more verbose boot of the engine alone with SVLAUNCH_EXIT_STATS=1 (not counted)",
    )
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
        profile = a.exit_stats and "verbose" in modes
        plans = (
            {m: plan_file(manifests[m]) for m in modes} if "engine" in engines or profile else {}
        )
        files = [str(kernel), str(initrd), *map(str, manifests.values())]
        files += map(str, plans.values())

        def command(eng: str, mode: str) -> list[str]:
            if eng == "builtin":
                return ["python3", "-m", "launcher.cli", "up", str(manifests[mode])]
            if eng == "engine":
                return ["python3", "-m", "engine", "run", "--plan", str(plans[mode])]
            return qemu_argv(kernel, initrd, MODES[mode])

        # a first boot of each VMM, not counted: L1's first Python start compiles and caches
        # what later starts reuse (it cost the first builtin boot 10-18 s of CPU)
        steps = [boot_command(f"{eng}.quiet.warmup", command(eng, modes[-1])) for eng in engines]
        for r in range(a.rounds):
            for mode in modes:
                for eng in engines if r % 2 == 0 else engines[::-1]:
                    steps.append(boot_command(f"{eng}.{mode}.{r}", command(eng, mode)))
        if profile:
            stats = ["env", "SVLAUNCH_EXIT_STATS=1", *command("engine", "verbose")]
            steps.append(boot_command("engine.verbose.profile", stats))
        rig = [sys.executable, str(RIG), "--l2-cmd", "; ".join(steps), "--timeout", str(a.timeout)]
        for f in files:
            rig += ["--file", f]
        if "qemu" in engines:
            rig.append("--qemu")
        code, out, err, cpu = run_rig(rig)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_bytes(out)
    parts = split_output(out)
    sizes = {label: len(data) for label, data in parts.items()}
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    nbytes: dict[tuple[str, str], list[int]] = {}
    failed = 0
    for m in TIME.finditer(err):
        label, secs, rc = m.group(1), float(m.group(2)), int(m.group(3))
        eng, mode, r = label.split(".")
        if r in ("warmup", "profile"):
            print(f"  {label:22s} {secs:7.2f} s in L1 ({r}, not counted)", flush=True)
            continue
        if rc != 0:
            print(f"  {label}: FAILED (exit {rc})")
            failed += 1
            continue
        times.setdefault((eng, mode), []).append(secs)
        if label in cpu:
            cpus.setdefault((eng, mode), []).append(cpu[label])
        nbytes.setdefault((eng, mode), []).append(sizes.get(label, -1))
        guest = guest_seconds(parts.get(label, b""))
        print(
            f"  {label:22s} {secs:7.2f} s in L1, {cpu.get(label, -1):7.2f} s of host CPU, "
            f"{sizes.get(label, -1):7d} bytes on ttyS0"
            + (f", last printk at {guest:6.2f} s" if guest is not None else ""),
            flush=True,
        )
    expected = a.rounds * len(modes) * len(engines)
    if sum(len(v) for v in times.values()) + failed < expected:
        tail = "\n  ".join(err.strip().splitlines()[-12:])
        print(f"rig run incomplete (exit {code}):\n  {tail}")
        failed += 1

    others = [e for e in engines if e != "qemu"]
    heads = engines + [f"{e}/qemu" for e in others if "qemu" in engines]
    for title, table in (("boot time in L1, s", times), ("host CPU time of L1, s", cpus)):
        print(f"\n{title}")
        print(f"{'mode':8s} {'bytes':>7s} " + " ".join(f"{h:>14s}" for h in heads))
        print(f"{'':8s} {'':>7s} " + " ".join(f"{'median  best':>14s}" for _ in heads))
        for mode in modes:
            cells = []
            for eng in engines:
                x = table.get((eng, mode))
                cells.append(f"{statistics.median(x):7.2f} {min(x):6.2f}" if x else f"{'-':>14s}")
            q = table.get(("qemu", mode))
            for eng in others if q else []:
                x = table.get((eng, mode))
                if not x:
                    cells.append(f"{'-':>14s}")
                    continue
                med, best = statistics.median(x) / statistics.median(q), min(x) / min(q)
                cells.append(f"{med:7.2f} {best:6.2f}")
            counts = [n for e in engines for n in nbytes.get((e, mode), [])] or [0]
            print(f"{mode:8s} {max(counts):7d} " + " ".join(cells))
    print(
        "\nmedian and best over the rounds. Boot time: L1's clock around the VMM (exec to exit); "
        "the host's other load slows L1 down and only ever adds to it. Host CPU time: what the "
        "L1 QEMU process (TCG) consumed on the host meanwhile: the work itself, much less "
        "sensitive to that load. bytes: the most one boot printed. last printk: the guest "
        "kernel's own clock at its last timestamped line (the rest of a boot's time is the VMM "
        f"starting and ending). The rig's output: {OUTPUT.relative_to(REPO)}. Goal: verbose "
        "builtin/qemu <= 1.00."
    )
    profile_lines = [
        ln.split("exit-stats ", 1)[1] for ln in err.splitlines() if "exit-stats " in ln
    ]
    if profile_lines:
        print("\nprofile: engine alone, verbose, SVLAUNCH_EXIT_STATS=1 (the exits' cost included)")
        print("\n".join(f"  {ln}" for ln in profile_lines))
    print()
    for mode in modes:  # for scripts/readme-numbers
        for eng in engines:
            x, c = times.get((eng, mode)), cpus.get((eng, mode))
            if x:
                result(
                    "rig_console",
                    mode=mode,
                    vmm=ENGINES[eng],
                    bytes=max(nbytes[(eng, mode)]),
                    runs=len(x),
                    min_s=min(x),
                    median_s=statistics.median(x),
                    cpu_median_s=statistics.median(c) if c else -1.0,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
