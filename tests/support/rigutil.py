"""Run the nested rig (scripts/rig) from tests and parse what the L2 test guest reported.

    from rigutil import run_rig
    res = run_rig("examples/quickstart.toml", timeout=300)
    assert res.returncode == 0 and res.done
    assert res.first("cpus").fields["online"] == "2"

The guest (scripts/guest/init) prints lines `SVREPORT <kind> <args...> <key=value...>`; each
becomes a Report. Why a subprocess: the rig is a CLI others use by hand too, and its stdout is
exactly the inner VMM's output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RIG = REPO / "scripts" / "rig"
GUEST = REPO / "build" / "guest"
L1_JOB = REPO / "tests" / "rig" / "devices" / "l1_job.py"
REPORT = re.compile(r"SVREPORT (\S+) ?(.*?)\r?$")


def guest_file(name: str) -> Path:
    """A build/guest/ file for a test that needs no rig (unit tests of the loader): CI builds the
    image first (``make test`` depends on ``make guest``), so there a missing file fails; on a
    developer's machine without it, the test is skipped."""
    import pytest

    path = GUEST / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI runs `make guest` before the tests")
        pytest.skip(f"{path} not built (make guest)")
    return path


@dataclass(frozen=True)
class Report:
    """One SVREPORT line: `kind`, positional `args`, `key=value` `fields`, and the raw `text`."""

    kind: str
    text: str
    args: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)


def parse_reports(output: str) -> list[Report]:
    """SVREPORT lines anywhere in the guest output (kernel messages may precede them)."""
    out = []
    for line in output.splitlines():
        at = line.find("SVREPORT ")
        if at < 0:
            continue
        m = REPORT.match(line[at:])
        if not m:
            continue
        kind, text = m.group(1), m.group(2)
        args: list[str] = []
        fields: dict[str, str] = {}
        if kind != "cmdline":
            for word in text.split():
                key, eq, value = word.partition("=")
                if eq:
                    fields[key] = value
                else:
                    args.append(word)
        out.append(Report(kind, text, tuple(args), fields))
    return out


@dataclass(frozen=True)
class RigResult:
    """A finished rig run: exit status (None: a boot of ``run_rig_boots`` that never ran), the
    guest's output and reports, and timings."""

    returncode: int | None
    stdout: str
    stderr: str
    reports: list[Report]
    inner_boot_s: float | None
    total_s: float | None

    @property
    def done(self) -> bool:
        return any(r.kind == "done" for r in self.reports)

    @property
    def timed_out(self) -> bool:
        return self.returncode == 124

    def all(self, kind: str) -> list[Report]:
        return [r for r in self.reports if r.kind == kind]

    def first(self, kind: str) -> Report:
        found = self.all(kind)
        if not found:
            raise AssertionError(f"no SVREPORT {kind} line in the guest output:\n{self.stdout}")
        return found[0]

    def explain(self) -> str:
        """Both streams, for assertion messages."""
        return (
            f"exit {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _run(args: list[str], timeout: float) -> RigResult:
    cmd = [sys.executable, str(RIG), *args, "--timeout", str(timeout)]
    # The rig enforces `timeout` itself; the margin covers building the cached L1 layers.
    proc = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=timeout + 600, cwd=REPO
    )
    return RigResult(
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        reports=parse_reports(proc.stdout),
        inner_boot_s=_float(r"rig: inner boot took ([\d.]+) s", proc.stderr),
        total_s=_float(r"rig: whole run took ([\d.]+) s", proc.stderr),
    )


def run_rig(
    manifest_path: str | os.PathLike[str] | None = None,
    timeout: float = 300,
    vmm: str = "builtin",
    l1_setup: str | None = None,
    plan: str | os.PathLike[str] | None = None,
) -> RigResult:
    """Boot a manifest (or a plan JSON file, with vmm="qemu") inside the rig."""
    args: list[str] = [] if manifest_path is None else [str(manifest_path)]
    if plan is not None:
        args += ["--plan", str(plan)]
    args += ["--vmm", vmm]
    if l1_setup:
        args += ["--l1-setup", l1_setup]
    return _run(args, timeout)


def run_rig_raw(
    cmd: str,
    files: Sequence[str | os.PathLike[str]] = (),
    writeback: Sequence[str | os.PathLike[str]] = (),
    timeout: float = 300,
    l1_setup: str | None = None,
    qemu: bool = False,
    l1_cpus: int = 1,
) -> RigResult:
    """Run `cmd` (sh -c) in L1 with `files` at their host paths; `writeback` files come back."""
    args = ["--l2-cmd", cmd, "--l1-cpus", str(l1_cpus)]
    for f in files:
        args += ["--file", str(f)]
    for f in writeback:
        args += ["--writeback", str(f)]
    if l1_setup:
        args += ["--l1-setup", l1_setup]
    if qemu:
        args.append("--qemu")
    return _run(args, timeout)


def l1_job(*args: str) -> str:
    """A shell command (for ``l1_setup``) that starts tests/rig/devices/l1_job.py in the
    background in L1: it acts on the running guest when the guest's console text appears."""
    return f"{{ python3 -c {shlex.quote(L1_JOB.read_text())} {shlex.join(args)} & }}"


def jobs(res: RigResult) -> list[dict[str, str]]:
    """The l1_job's ``RIGJOB key=value`` lines (L1 console, on the rig's stderr)."""
    out = []
    for line in res.stderr.splitlines():
        at = line.find("RIGJOB ")
        if at >= 0:
            out.append(dict(w.partition("=")[::2] for w in line[at + 7 :].split()))
    return out


def job(res: RigResult, event: str, **match: str) -> dict[str, str]:
    """The first l1_job line of ``event`` whose fields equal ``match``."""
    for j in jobs(res):
        if j.get("event") == event and all(j.get(k) == v for k, v in match.items()):
            return j
    raise AssertionError(f"no RIGJOB event={event} {match} from L1:\n{res.explain()}")


BOOT_MARK = re.compile(r"SVBOOT-(start|rc) (\S+)(?: (\d+))?")


def svlaunch_up_cmd(manifest: str | os.PathLike[str]) -> str:
    """The shell command that boots a manifest with the builtin engine in L1 (the user's way)."""
    return shlex.join(["python3", "-m", "launcher.cli", "up", str(manifest)])


def run_rig_boots(
    boots: Sequence[tuple[str, str]],
    files: Sequence[str | os.PathLike[str]] = (),
    writeback: Sequence[str | os.PathLike[str]] = (),
    timeout: float = 300,
    l1_setup: str | None = None,
    l1_cpus: int = 1,
) -> tuple[RigResult, dict[str, RigResult]]:
    """Several inner boots, one after the other, in one L1 run (one L1 boot, not one per VM).

    ``boots`` are ``(label, shell command)``; each label's output, exit status and reports come
    back as its own RigResult (stderr: the whole run's), with the whole run's result first. A
    boot the run never reached (timeout) has returncode None.
    """
    script = "; ".join(
        f"echo SVBOOT-start {label}; {cmd} </dev/null; echo SVBOOT-rc {label} $?"
        for label, cmd in boots
    )
    whole = run_rig_raw(
        script, files, writeback, timeout=timeout, l1_setup=l1_setup, l1_cpus=l1_cpus
    )
    marks = list(BOOT_MARK.finditer(whole.stdout))
    out: dict[str, RigResult] = {}
    for label, _cmd in boots:
        start = next((m for m in marks if m.group(1) == "start" and m.group(2) == label), None)
        end = next((m for m in marks if m.group(1) == "rc" and m.group(2) == label), None)
        text = whole.stdout[start.end() if start else 0 : end.start() if end else None]
        if start is None:
            text = ""
        rc = int(end.group(3)) if end is not None else None
        out[label] = RigResult(rc, text, whole.stderr, parse_reports(text), None, None)
    return whole, out


def qemu_microvm_cmd(
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    cmdline: str,
    cpus: int = 1,
    mem_mib: int = 256,
    extra: Sequence[str] = (),
) -> str:
    """A shell command that boots the test guest with QEMU microvm on L1's /dev/kvm."""
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host"]
    argv += ["-smp", str(cpus), "-m", f"{mem_mib}M", "-nodefaults", "-no-user-config"]
    argv += ["-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel)]
    argv += ["-initrd", str(initrd), "-append", cmdline, *extra]
    return shlex.join(argv)
