"""Boot time of the test guest inside the nested rig: QEMU microvm vs svlaunch's builtin engine.

Both inner VMMs boot the same VM (kernel, initrd, command line, vCPUs, memory) on L1's KVM:
the builtin engine from a manifest (`svlaunch up`), QEMU from that manifest's plan. The time is
measured inside L1 around the VMM process (exec to exit, guest power-off included).

    python bench/rig_boot.py [--runs N] [--kernel vmlinux|vmlinuz] [--cpus N] [--mem-mib N]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._result import result  # noqa: E402

GUEST = REPO / "build" / "guest"
CMDLINE = "console=ttyS0 quiet reboot=k panic=1 pci=off"


def manifest_text(kernel: Path, cpus: int, mem_mib: int) -> str:
    return (
        'name = "rig-boot-bench"\nserial = "stdio"\n\n[machine]\ntype = "microvm"\n\n'
        f'[cpu]\ncpus = {cpus}\n\n[memory]\nsize = "{mem_mib}M"\n\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{GUEST / "initrd.img"}"\ncmdline = "{CMDLINE}"\n'
    )


def rig(args: list[str], timeout: float) -> tuple[int, float | None, float | None, str]:
    """Run scripts/rig; return (exit, inner boot s, whole run s, stderr)."""
    cmd = [sys.executable, str(REPO / "scripts" / "rig"), *args, "--timeout", str(timeout)]
    res = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    inner = re.search(r"rig: inner boot took ([\d.]+) s", res.stderr)
    whole = re.search(r"rig: whole run took ([\d.]+) s", res.stderr)
    return (
        res.returncode,
        float(inner.group(1)) if inner else None,
        float(whole.group(1)) if whole else None,
        res.stderr,
    )


def plan_works(manifest: Path) -> str | None:
    """None when `svlaunch plan` accepts the manifest, else why not (one line)."""
    py = REPO / ".venv" / "bin" / "python"
    res = subprocess.run(
        [str(py if py.exists() else sys.executable), "-m", "launcher.cli", "plan", str(manifest)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if res.returncode == 0:
        return None
    return (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--kernel", choices=("vmlinux", "vmlinuz"), default="vmlinux")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--mem-mib", type=int, default=512)
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args(argv)
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    kernel = GUEST / a.kernel
    vm = f"{a.kernel}, {a.cpus} vCPU, {a.mem_mib} MiB, cmdline {CMDLINE!r}"
    print(f"rig_boot: test guest ({vm}) inside the rig (L1: QEMU TCG, nested SVM)")
    failed = 0
    boots: dict[str, list[float]] = {}  # every run of a VMM booted
    with tempfile.TemporaryDirectory(prefix="rig-boot-") as tmp:
        manifest = Path(tmp) / "bench.toml"
        manifest.write_text(manifest_text(kernel, a.cpus, a.mem_mib))
        why = plan_works(manifest)
        if why is not None:
            print(f"rig_boot: `svlaunch plan` unavailable ({why}); QEMU only, from a plan file")
            plan = Path(tmp) / "plan.json"
            boot = {"kernel": str(kernel), "initrd": str(GUEST / "initrd.img"), "cmdline": CMDLINE}
            doc = {"boot": boot, "vcpus": a.cpus, "memory": {"size": a.mem_mib * 2**20}}
            plan.write_text(json.dumps(doc))
            modes = [("qemu-microvm", ["--plan", str(plan), "--vmm", "qemu"])]
        else:
            modes = [
                ("qemu-microvm", [str(manifest), "--vmm", "qemu"]),
                ("svlaunch-builtin", [str(manifest), "--vmm", "builtin"]),
            ]
        for name, args in modes:
            inner: list[float] = []
            for i in range(a.runs):
                rc, t_inner, t_whole, err = rig(args, a.timeout)
                if rc != 0 or t_inner is None:
                    tail = "\n  ".join(err.strip().splitlines()[-6:])
                    print(f"{name:18s} run {i + 1}: FAILED (exit {rc})\n  {tail}")
                    failed += 1
                    break
                inner.append(t_inner)
                print(
                    f"{name:18s} run {i + 1}: inner boot {t_inner:6.2f} s, whole rig run {t_whole:6.2f} s"
                )
            if len(inner) > 1:
                print(
                    f"{name:18s} median inner boot {statistics.median(inner):6.2f} s over {len(inner)} runs"
                )
            if len(inner) == a.runs:
                boots[name] = inner
    for name, inner in boots.items():
        result("rig_boot", vmm=name, kernel=a.kernel, cpus=a.cpus, mem_mib=a.mem_mib,
               runs=len(inner), min_s=min(inner), median_s=statistics.median(inner))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
