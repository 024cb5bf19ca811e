"""Run every benchmark in bench/ (or those named on the command line) and print their numbers.

python -m bench                                # all of them
python -m bench cmdline_startup                # one
python -m bench --save engine_startup          # ... and keep its output in bench/results/
python -m bench engine_startup -- 5            # arguments after -- go to each benchmark

``--save`` writes each run's output, behind a header (what ran, when, on which machine under
which load, from which commit, the exact command), to bench/results/NAME-YYYY-MM-DD.txt, where
scripts/readme-numbers reads its RESULT lines. A run that fails is kept as ``….txt.failed``
instead, so it never becomes the README's source.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
#: the module /sys/module shows for each kind of /dev/kvm, most specific first
KVM_MODULES = ("kvm_pvm", "kvm_amd", "kvm_intel")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def kvm_kind() -> str:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    kinds = [m for m in KVM_MODULES if os.path.isdir(f"/sys/module/{m}")]
    return f"/dev/kvm: {', '.join(kinds) or 'kvm'}"


def git_revision() -> str:
    """The commit the run measured (with '+ changes' when the tree differs from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} + uncommitted changes" if dirty else head


def header(name: str, cmd: list[str]) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"bench: {name}, {when}\n"
        f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, {kvm_kind()}\n"
        f"load average at the start: {load} (the cores may be shared; other load only ever "
        "slows a run down)\n"
        f"commit: {git_revision()}\n"
        f"command: {shlex.join(cmd)}  (in {REPO})\n\n"
    )


def run_saved(name: str, cmd: list[str]) -> int:
    """Run ``cmd``, its output to stdout and to bench/results/NAME-DATE.txt."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y-%m-%d', time.gmtime())}.txt"
    partial = path.with_name(path.name + ".partial")
    start = time.monotonic()
    with open(partial, "w", encoding="utf-8") as out:
        head = header(name, cmd)
        sys.stdout.write(head)
        out.write(head)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            out.write(line)
        rc = proc.wait()
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        out.write(
            f"\nexit {rc} in {time.monotonic() - start:.1f} s; load average at the end: {load}\n"
        )
    final = path if rc == 0 else path.with_name(path.name + ".failed")
    partial.replace(final)
    print(f"-- saved to {final.relative_to(REPO)}", flush=True)
    return rc


def main(argv: list[str]) -> int:
    cut = argv.index("--") if "--" in argv else len(argv)
    own, passed = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--save", action="store_true",
                   help="also write each run's output to bench/results/NAME-YYYY-MM-DD.txt")  # fmt: skip
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    a = p.parse_args(own)
    every = sorted(q.stem for q in HERE.glob("*.py") if not q.name.startswith("_"))
    unknown = [n for n in a.names if n not in every]
    if unknown:
        p.error(
            f"no benchmark named {', '.join(map(ascii, unknown))} (there are: {', '.join(every)})"
        )
    failed = 0
    for name in a.names or every:
        cmd = [sys.executable, str((HERE / f"{name}.py").relative_to(REPO)), *passed]
        print(f"== {name} ==", flush=True)
        start = time.monotonic()
        rc = run_saved(name, cmd) if a.save else subprocess.call(cmd, cwd=REPO)
        print(f"-- {name}: exit {rc} in {time.monotonic() - start:.1f} s\n", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
