"""The builtin engine boots real Linux inside its ozone sandbox with seccomp on (nested rig).

One L1 run (raw mode) executes ``tests/rig/sandbox/l1_check.py`` on the manifest
``tests/rig/sandbox/sandboxed.toml`` (uid/gid 1000, no capabilities, cgroup v2 cpuset + memory
limits, seccomp on). L1 runs from its initramfs, so the sandbox takes its MS_MOVE + chroot path
there (``engine/ozone/rootfs.py``; ``pivot_root`` fails on rootfs). The script boots the guest
with ``svlaunch up`` while reading the engine's ``/proc/<pid>/`` from outside, stops a detached
VM with ``svlaunch down``, kills a supervisor and lets the next ``up`` clean after it, and after
each phase reports what is left (jail, private socket dir, cgroup, mounts, state file, links).
"""

from __future__ import annotations

import subprocess

import pytest
from rigutil import GUEST, REPO, RigResult, parse_reports, run_rig_raw

pytestmark = pytest.mark.rig

CASE = REPO / "tests" / "rig" / "sandbox"
MANIFEST = CASE / "sandboxed.toml"
NAME = "rig-sandbox"
TIMEOUT = 900  # four engine starts and two Linux boots under TCG, on a shared machine


def checks(stdout: str) -> list[dict[str, str]]:
    out = []
    for line in stdout.splitlines():
        at = line.find("SBXCHECK ")
        if at >= 0:
            words = line[at + len("SBXCHECK ") :].split()
            out.append(dict(w.partition("=")[::2] for w in words))
    return out


def phase(stdout: str, name: str) -> str:
    """The output of one phase (from its SBXPHASE line to the next)."""
    start = stdout.index(f"SBXPHASE name={name}")
    nxt = stdout.find("SBXPHASE ", start + 1)
    return stdout[start : nxt if nxt >= 0 else len(stdout)]


@pytest.fixture(scope="module")
def run() -> RigResult:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    files = [MANIFEST, CASE / "l1_check.py", GUEST / "vmlinuz", GUEST / "initrd.img"]
    cmd = f"python3 {CASE / 'l1_check.py'} {MANIFEST} {NAME}"
    res = run_rig_raw(cmd, files=files, timeout=TIMEOUT)
    out = REPO / "build" / "rig-sandbox"
    out.mkdir(parents=True, exist_ok=True)
    (out / "last-run.txt").write_text(res.explain())  # the whole L1 run, for a failing test
    return res


def one(run: RigResult, key: str, value: str | None = None, **match: str) -> dict[str, str]:
    for c in checks(run.stdout):
        if (
            key in c
            and (value is None or c[key] == value)
            and all(c.get(k) == v for k, v in match.items())
        ):
            return c
    raise AssertionError(f"no SBXCHECK {key}={value} {match}:\n{run.explain()}")


def assert_nothing_left(run: RigResult, phase_name: str) -> None:
    c = one(run, "left", phase=phase_name)
    for what in ("jail", "sockdir", "cgroup", "mounts", "state", "link"):
        assert c[what] == "0", f"{phase_name}: {what} left behind: {c}\n{run.explain()}"


@pytest.mark.parametrize("name", ["boot", "again"])
def test_guest_boots_to_done_in_the_sandbox(run: RigResult, name: str) -> None:
    assert run.returncode == 0, run.explain()
    up = one(run, "up", name)
    assert up["rc"] == "0", run.explain()
    reports = parse_reports(phase(run.stdout, name))
    assert any(r.kind == "done" for r in reports), run.explain()
    assert "Kernel panic" not in run.stdout


def test_engine_runs_jailed_with_seccomp_on_every_thread(run: RigResult) -> None:
    c = one(run, "running", "yes")  # the first: seen during the foreground boot
    assert c["uid"] == "1000" and c["nnp"] == "1", c
    assert int(c["capeff"], 16) == 0 and int(c["capbnd"], 16) == 0, c
    assert int(c["threads"]) >= 2 and c["seccomp_threads"] == c["threads"], c
    assert f"/stratovirt/{NAME}" in c["cgroup"], c
    assert c["jail"] == "1" and "plan.json" in c["root"].split(","), c
    assert "proc" not in c["root"].split(","), c  # the jail is all it sees


def test_nothing_is_left_after_the_guest_powers_off(run: RigResult) -> None:
    assert_nothing_left(run, "boot")
    assert_nothing_left(run, "again")


def test_down_stops_a_running_sandboxed_vm_and_leaves_nothing(run: RigResult) -> None:
    d = one(run, "detached", "0", qmp_link="1")  # QMP reached through the socket link
    assert d
    assert one(run, "down")["down"] == "0", run.explain()
    assert_nothing_left(run, "down")


def test_a_crashed_supervisor_is_cleaned_by_down_and_up_works_again(run: RigResult) -> None:
    c = one(run, "killed_supervisor")
    assert c["detached"] == "0" and c["engine_gone"] == "1", c
    # `svlaunch down` finds the dead engine and tears its jail down (-clean-resource).
    assert_nothing_left(run, "crash")
    assert one(run, "up", "again")["rc"] == "0"
    assert_nothing_left(run, "again")


def test_startup_with_and_without_the_sandbox_is_reported(run: RigResult) -> None:
    """Numbers for the docs (not a timing assertion): ``up -d --paused`` until QMP answers."""
    c = one(run, "startup_plain_s")
    print(f"\nrig L1 up -d --paused until QMP: {c}")
    assert float(c["startup_plain_s"]) > 0 and float(c["startup_sandboxed_s"]) > 0, c
    assert_nothing_left(run, "startup")
