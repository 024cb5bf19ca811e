"""virtio-blk in the nested rig, measured with fio in the guest: svlaunch's builtin engine next to
QEMU microvm, on the same guest, kernel and disk image, in the same L1 boot.

For each aio mode asked for, one L1 run boots the VM alternately under each VMM (``--rounds``
times each, ABBA order) and fio runs the same job file in the guest each time
(bench/rig_blk_parts.py): random and sequential, 4 KiB and 1 MiB, queue depths 1 and 32, reads
and writes, and random 4 KiB writes with an fsync after each, O_DIRECT in the guest. The data
disk is a raw image in an ext4 file system L1 loop-mounts from its RAM, so O_DIRECT works and
both VMMs read and write the same file the same way:

    mode       builtin engine                QEMU
    off        aio = "off", direct = false   aio=threads, cache.direct=off (its page cache)
    native     aio = "native", direct = true aio=native, cache.direct=on
    io_uring   aio = "io_uring", direct=true aio=io_uring, cache.direct=on

Each table row is one job: the builtin engine's and QEMU's medians over the rounds, the ratio of
the medians, and the lowest and highest ratio of a builtin run to the QEMU run next to it in time.
Everything runs under TCG on this host, so absolute figures are far below bare metal; the ratio
is the point. ``--save`` writes the output to bench/results/rig_blk-DATE.txt; its ``RESULT``
lines are what scripts/readme-numbers turns into README rows.

    python bench/rig_blk.py [--modes off,native,io_uring] [--rounds 2] [--runtime 4]
                            [--jobs goals|all|NAME,...] [--iothread] [--save]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig_blk_parts import (
    GOALS,
    GUEST,
    JOBS,
    MOUNT,
    REPO,
    WORK,
    Job,
    JobResult,
    Setup,
    bench_initrd,
    data_image,
    job_file,
    loop_module,
    manifest_text,
    parse,
    profile_summary,
    py_spy,
    qemu_argv,
)

MODES = {
    "off": Setup("off", direct=False),
    "native": Setup("native", direct=True),
    "io_uring": Setup("io_uring", direct=True),
}
NAMES = {"builtin": "builtin", "qemu": "QEMU"}


def l1_script(runs: list[tuple[str, str]], data_img: Path, loop_ko: Path) -> str:
    """The shell L1 runs: loop-mount the data image, then each VMM run between markers."""
    lines = [
        f"insmod {loop_ko} 2>/dev/null; mkdir -p {MOUNT}",
        f"mount -t ext4 -o loop {data_img} {MOUNT} || {{ echo 'SVRUN-fail mount'; exit 1; }}",
    ]
    for label, cmd in runs:
        lines.append(f"echo SVRUN-start {label}; {cmd} </dev/null 2>&1; echo SVRUN-end {label} $?")
    lines.append(f"umount {MOUNT}")
    return "\n".join(lines)


def split_runs(stdout: str) -> dict[str, tuple[str, int | None]]:
    """Each run's output and exit status, by label."""
    out: dict[str, tuple[str, int | None]] = {}
    label, buf = None, []
    for line in stdout.splitlines():
        if line.startswith("SVRUN-start "):
            label, buf = line.split()[1], []
        elif line.startswith("SVRUN-end ") and label is not None:
            rc = line.split()[2] if len(line.split()) > 2 else ""
            out[label] = ("\n".join(buf), int(rc) if rc.isdigit() else None)
            label = None
        elif label is not None:
            buf.append(line)
    return out


def host_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"host: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
        f"load average {load}; {now}"
    )


def run_mode(
    a: argparse.Namespace,
    setup: Setup,
    jobs: list[Job],
    files: dict[str, Path],
    results_out: list[str],
) -> str:
    """One L1 run for ``setup``; returns the printed section (also printed as it goes) and adds
    its ``RESULT`` lines (scripts/readme-numbers reads them) to ``results_out``."""
    cmdline = "console=ttyS0 quiet reboot=k panic=1"
    kernel, initrd, tools = files["kernel"], files["initrd"], files["tools"]
    engines = a.engines.split(",")
    out: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    with tempfile.TemporaryDirectory(prefix="rig-blk-") as tmp:
        manifest = Path(tmp) / f"bench-{setup.aio}.toml"
        manifest.write_text(manifest_text(setup, kernel, initrd, tools, cmdline))
        env = " ".join(shlex.quote(e) for e in a.engine_env)
        log = f"/run/svlaunch/rig-blk-{setup.aio}.last.log"
        # a VMM whose guest stops making progress (a lost interrupt, a hung job) is ended after
        # this long, so the other runs still report (SVRUN-end shows 124 or 143)
        bound = f"timeout {a.run_timeout or 240 + 4 * len(jobs) * (a.runtime + a.ramp)}"
        cmds = {
            # the engine's log (warnings, SVLAUNCH_EXIT_STATS) after the run, marked
            "builtin": f"{env} {bound} python3 -m launcher.cli up {manifest}; rc=$?; "
            f"sed 's/^/engine-log| /' {log} 2>/dev/null; rm -f {log}; (exit $rc)",
            "qemu": f"{bound} " + shlex.join(qemu_argv(setup, kernel, initrd, tools, cmdline)),
        }
        runs = []
        profiles: dict[str, Path] = {}
        for r in range(a.rounds):
            order = engines if r % 2 == 0 else engines[::-1]
            for eng in order:
                label = f"{eng}.{r}"
                cmd = cmds[eng]
                if eng == "builtin" and a.profile is not None:
                    # the engine itself under py-spy (20 Hz: it shares L1's CPU with what it
                    # measures), its stderr (SVLAUNCH_EXIT_STATS, SVLAUNCH_BLK_STATS) inline
                    prof = profiles[label] = WORK / f"profile-{setup.aio}-{label}.txt"
                    prof.write_text("")
                    plan = f"/tmp/plan-{setup.aio}-{label}.json"
                    # in braces: l1_script's </dev/null must not become sed's input
                    cmd = (
                        f"{{ python3 -m launcher.cli plan {manifest} > {plan} && {env} "
                        f"SVLAUNCH_EXIT_STATS=1 SVLAUNCH_BLK_STATS=1 {bound} {a.profile} record "
                        f"--nonblocking -r 20 -f raw -o {prof} -- python3 -m engine run "
                        f"--plan {plan} 2>&1 | sed 's/^/engine-log| /'; }}"
                    )
                runs.append((label, cmd))
        script = l1_script(runs, files["data"], files["loop"])
        rig = [sys.executable, str(REPO / "scripts" / "rig"), "--l2-cmd", script, "--qemu"]
        rig += ["--timeout", str(a.timeout), "--l1-cpus", str(a.l1_cpus)]
        for prof in profiles.values():
            rig += ["--writeback", str(prof)]
        if a.profile is not None:
            rig += ["--file", str(a.profile)]
        if a.icount is not None:
            rig += ["--icount", str(a.icount)]
        for f in (*files.values(), manifest):
            rig += ["--file", str(f)]
        proc = subprocess.run(rig, capture_output=True, text=True, errors="replace")
    (WORK / f"last-{setup.aio}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    runs_out = split_runs(proc.stdout)
    results: dict[str, list[dict[str, JobResult]]] = {eng: [] for eng in engines}
    setup_line: dict[str, str] = {}
    failed = []
    for label, _ in runs:
        eng = label.split(".")[0]
        text, rc = runs_out.get(label, ("", None))
        res, s_line, errors = parse(text, jobs)
        setup_line = setup_line or s_line
        results[eng].append(res)
        if a.verbose:
            for line in text.splitlines():
                if "SVBENCH" not in line and line.strip():
                    print(f"   {label}| {line}", flush=True)
        if rc != 0 or errors or len(res) != len(jobs):
            tail = "\n    ".join((errors or text.strip().splitlines())[-6:])
            failed.append(f"  {label}: exit {rc}, {len(res)}/{len(jobs)} jobs\n    {tail}")
    q = setup.qemu_drive
    say(
        f"== aio mode {setup.aio}: builtin aio={setup.aio} direct={'on' if setup.direct else 'off'} "
        f"iothreads={'1 (io0)' if setup.iothread else 'none (main loop)'} queue-size="
        f"{setup.queue_size}; QEMU virtio-blk-device {q}"
        f"{', iothread io0' if setup.iothread else ''}"
    )
    if setup_line:
        say(
            f"   guest: /dev/{setup_line.get('dev')} {int(setup_line.get('sectors', 0)) // 2048} "
            f"MiB, {setup_line.get('fio')}, scheduler {setup_line.get('sched')}, nr_requests "
            f"{setup_line.get('nr_requests')}, write cache {setup_line.get('wc')}"
        )
    if proc.returncode != 0:
        say(f"   rig exit {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-4:]))
    for f in failed:
        say("   FAILED" + f)
    say(
        f"   {'job':34s} {'unit':>5s} {'builtin':>9s} {'QEMU':>9s} {'ratio':>6s} "
        f"{'pairs min-max':>14s} {'lat us b/q':>13s}"
    )
    for job in jobs:
        b = [r[job.name] for r in results.get("builtin", []) if job.name in r]
        qv = [r[job.name] for r in results.get("qemu", []) if job.name in r]
        if not b or not qv:  # one side failed: the other's figures still print
            one = [f"{statistics.median(x.value for x in v):9.1f}" if v else f"{'-':>9s}"
                   for v in (b, qv)]  # fmt: skip
            say(f"   {job.label:34s} {job.unit:>5s} {one[0]} {one[1]}")
            continue
        bm = statistics.median(x.value for x in b)
        qm = statistics.median(x.value for x in qv)
        pairs = [x.value / y.value for x, y in zip(b, qv, strict=False) if y.value]
        goal = " *" if job.name in GOALS else ""
        lat = f"{statistics.median(x.lat_us for x in b):.0f}/{statistics.median(x.lat_us for x in qv):.0f}"
        say(
            f"   {job.label:34s} {job.unit:>5s} {bm:9.1f} {qm:9.1f} {bm / qm:6.2f} "
            f"{min(pairs):6.2f}-{max(pairs):<6.2f} {lat:>13s}{goal}"
        )
        results_out.append(
            f"RESULT rig_blk aio={setup.aio} job={job.name} unit={job.unit} builtin={bm:.1f} "
            f"qemu={qm:.1f} ratio={bm / qm:.2f} goal={int(bool(goal))}"
        )
    for label, prof in profiles.items():
        for line in profile_summary(prof):
            say(f"   profile {label}: {line}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="off,native,io_uring", help="aio modes, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="boots per VMM and mode")
    p.add_argument("--runtime", type=int, default=4, help="seconds per fio job (after ramp)")
    p.add_argument("--ramp", type=int, default=1, help="seconds of each job not measured")
    p.add_argument("--jobs", default="all", help="all, goals, or job names (e.g. randread-4k-qd1)")
    p.add_argument("--disk-mib", type=int, default=256, help="size of the data disk")
    p.add_argument("--engines", default="builtin,qemu")
    p.add_argument("--iothread", action="store_true", help="serve the data disk on an iothread")
    p.add_argument("--l1-cpus", type=int, default=1)
    p.add_argument(
        "--icount",
        type=int,
        metavar="SHIFT",
        help="L1 counts instructions as time (scripts/rig --icount): figures measure work, "
        "not this host's load",
    )
    p.add_argument("--engine-env", action="append", default=[], metavar="K=V")
    p.add_argument(
        "--profile",
        action="store_const",
        const=True,
        help="run the builtin engine under py-spy in L1 (and SVLAUNCH_EXIT_STATS=1, "
        "SVLAUNCH_BLK_STATS=1): collapsed stacks in build/rig-blk/profile-*.txt, a summary here",
    )
    p.add_argument("--timeout", type=float, default=3000, help="seconds for each L1 run")
    p.add_argument(
        "--run-timeout",
        type=int,
        help="seconds for each VMM boot in L1 (default: 240 + 4 x the jobs' fio time)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the VMMs' other output")
    p.add_argument("--save", action="store_true", help="also write bench/results/rig_blk-DATE.txt")
    a = p.parse_args(argv)
    if a.profile:
        a.profile = py_spy()
    modes = [m for m in a.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        p.error(f"unknown aio mode(s) {bad}; choose from {', '.join(MODES)}")
    if a.jobs == "all":
        jobs = JOBS
    elif a.jobs == "goals":
        jobs = [j for j in JOBS if j.name in GOALS]
    else:
        wanted = a.jobs.split(",")
        jobs = [j for j in JOBS if j.name in wanted]
        if len(jobs) != len(wanted):
            p.error(f"unknown job(s); known: {', '.join(j.name for j in JOBS)}")
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    files = {
        "kernel": GUEST / "vmlinuz",
        "initrd": bench_initrd(WORK / "initrd-bench.img", job_file(jobs, a.runtime, a.ramp)),
        "tools": GUEST / "tools.ext4",
        "data": data_image(a.disk_mib),
        "loop": loop_module(),
    }
    kversion = (GUEST / "kernel-version").read_text().strip()
    header = [
        "rig_blk: virtio-blk under fio in L2, builtin engine vs QEMU microvm in the same L1 run",
        host_line(),
        f"rig: L1 = QEMU TCG (EPYC, +svm, +npt), {a.l1_cpus} vCPU, 2 GiB; L2 on L1's KVM"
        + (
            f"; L1 clock = instructions (-icount shift={a.icount}: 2^{a.icount} ns each)"
            if a.icount is not None
            else "; L1 clock = host wall clock"
        ),
        f"guest: Debian {kversion}, 1 vCPU, 256 MiB, busybox init + fio from tools.ext4; "
        f"fio direct=1, libaio (psync for fsync), {a.runtime} s per job after {a.ramp} s ramp",
        f"disk: {a.disk_mib} MiB raw image on ext4, loop-mounted in L1 from RAM (tmpfs); "
        "both VMMs open the same file",
        f"{a.rounds} boot(s) per VMM and mode, ABBA order; * = goal (builtin >= 1.0 x QEMU)",
    ]
    header.insert(1, "command: " + shlex.join(["python3", "bench/rig_blk.py", *argv]))
    text = list(header)
    for line in header:
        print(line, flush=True)
    results: list[str] = []
    for mode in modes:
        setup = MODES[mode]
        if a.iothread:
            setup = Setup(setup.aio, setup.direct, iothread=True)
        text.append(run_mode(a, setup, jobs, files, results))
    tail = ["", "scripts/readme-numbers reads these (medians):", *results]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tail.append(f"load average at the end: {load}")
    for line in tail:
        print(line, flush=True)
    if a.save:
        path = REPO / "bench" / "results" / f"rig_blk-{datetime.date.today().isoformat()}.txt"
        path.write_text("\n".join(text + tail) + "\n")
        print(f"saved {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
