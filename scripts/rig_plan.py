"""Turn an svlaunch plan (`svlaunch plan MANIFEST`, JSON) into what the rig runs in L1.

Two inner VMMs boot the same VM: the builtin engine (`svlaunch up MANIFEST`, files placed at the
same absolute paths so the manifest needs no rewriting) and Debian's QEMU microvm built from the
plan's boot/vcpus/memory/devices fields, for comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rig_debs import REPO, BuildError
from rig_run import HostFile, RunSpec


def load_plan(manifest: Path) -> dict[str, Any]:
    """Run `svlaunch plan MANIFEST` on the host and parse its JSON."""
    venv = REPO / ".venv" / "bin" / "python"
    py = str(venv) if venv.exists() else sys.executable
    res = subprocess.run(
        [py, "-m", "launcher.cli", "plan", str(manifest)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise BuildError(
            f"`svlaunch plan {manifest}` failed (exit {res.returncode}):\n{res.stderr.strip()}\n"
            "hint: fix the manifest, or run a command directly with --l2-cmd (raw mode)"
        )
    try:
        plan = json.loads(res.stdout)
    except json.JSONDecodeError as e:
        raise BuildError(f"`svlaunch plan {manifest}` did not print JSON: {e}") from e
    if not isinstance(plan, dict):
        raise BuildError(f"`svlaunch plan {manifest}` printed {type(plan).__name__}, not an object")
    return plan


def _abs(path: str, base: Path) -> str:
    return str(base / path) if not os.path.isabs(path) else path


def host_files(plan: dict[str, Any], base: Path) -> list[HostFile]:
    """The plan's `host_files` ({path, role, writable}) as rig files."""
    out = []
    for item in plan.get("host_files", []):
        out.append(HostFile(_abs(str(item["path"]), base), bool(item.get("writable", False))))
    return out


def qemu_argv(plan: dict[str, Any], base: Path) -> tuple[list[str], list[HostFile]]:
    """A QEMU microvm command line for the plan's VM, and the files it reads or writes."""
    try:
        boot = plan["boot"]
        vcpus = plan["vcpus"]
        ncpu = len(vcpus) if isinstance(vcpus, list) else int(vcpus)
        mem_mib = max(1, int(plan["memory"]["size"]) // 2**20)
        kernel = _abs(boot["kernel"], base)
    except (KeyError, TypeError, ValueError) as e:
        raise BuildError(f"plan lacks a field --vmm qemu needs: {e!r}") from e
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host"]
    argv += ["-smp", str(ncpu), "-m", f"{mem_mib}M", "-nodefaults", "-no-user-config"]
    argv += ["-nographic", "-no-reboot", "-serial", "stdio", "-kernel", kernel]
    files = [HostFile(kernel)]
    if boot.get("initrd"):
        initrd = _abs(boot["initrd"], base)
        argv += ["-initrd", initrd]
        files.append(HostFile(initrd))
    argv += ["-append", str(boot.get("cmdline", ""))]
    for i, dev in enumerate(d for d in plan.get("devices", []) if d.get("kind") == "blk"):
        path = _abs(dev["file"], base)
        ro = bool(dev.get("readonly", False))
        drive = f"id=blk{i},file={path.replace(',', ',,')},format=raw,if=none"
        argv += ["-drive", drive + (",readonly=on" if ro else "")]
        serial = dev.get("serial")
        argv += [
            "-device",
            f"virtio-blk-device,drive=blk{i}" + (f",serial={serial}" if serial else ""),
        ]
        files.append(HostFile(path, writable=not ro))
    return argv, files


def _merge(*groups: list[HostFile]) -> list[HostFile]:
    by_path: dict[str, HostFile] = {}
    for group in groups:
        for f in group:
            old = by_path.get(f.path)
            by_path[f.path] = HostFile(f.path, f.writable or (old is not None and old.writable))
    return list(by_path.values())


def spec_for(manifest: Path | None, plan: dict[str, Any] | None, vmm: str) -> RunSpec:
    """The L1 run for a manifest (builtin or qemu) or a plan file (qemu)."""
    base = manifest.parent if manifest is not None else Path.cwd()
    if plan is None:
        assert manifest is not None
        plan = load_plan(manifest)
    files = host_files(plan, base)
    if vmm == "qemu":
        argv, qfiles = qemu_argv(plan, base)
        return RunSpec(argv, str(base), _merge(files, qfiles), with_qemu=True)
    if manifest is None:
        raise BuildError("--vmm builtin needs a MANIFEST (the builtin engine boots manifests)")
    argv = ["python3", "-m", "launcher.cli", "up", str(manifest)]
    return RunSpec(argv, str(base), _merge(files, [HostFile(str(manifest))]))
