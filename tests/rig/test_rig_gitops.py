"""GitOps with the real Linux guest (nested rig): a live change reaches the running guest without a
reboot, and a change that needs a restart restarts it with the new size.

Inside L1, tests/rig/gitops/l1_gitops.py applies three revisions of a source folder with
``svlaunch apply``: the VM; ``balloon.target`` (live, QMP ``balloon``: the guest reports its
MemAvailable dropping in the same boot, the engine's pid unchanged); ``memory.size`` (a
restart: a new engine, a guest that reports the new size). A fourth apply changes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from rigutil import GUEST, L1_JOB, REPO, parse_reports, run_rig_raw

pytestmark = pytest.mark.rig

DRIVER = REPO / "tests" / "rig" / "gitops" / "l1_gitops.py"
MIB_KB = 1024


@pytest.fixture(scope="module")
def guest() -> Path:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    return GUEST


def steps(stdout: str) -> dict[str, dict]:
    out = {}
    for line in stdout.splitlines():
        at = line.find("GITOPS {")
        if at >= 0:
            data = json.loads(line[at + 7 :])
            out[data["step"]] = data
    return out


def boot(stdout: str, n: int) -> str:
    m = re.search(rf"GITOPS-BOOT {n}\n(.*?)GITOPS-END {n}", stdout, re.S)
    return m.group(1) if m else ""


def test_a_live_change_and_a_restart_reach_the_guest(guest: Path) -> None:
    kernel, initrd = guest / "vmlinuz", guest / "initrd.img"
    cmd = f"python3 {DRIVER} --kernel {kernel} --initrd {initrd} --wait 60"
    res = run_rig_raw(cmd, files=[DRIVER, L1_JOB, kernel, initrd], timeout=1200)
    explain = res.explain()
    assert res.returncode == 0, explain
    s = steps(res.stdout)
    assert s["create"]["apply_rc"] == 0 and s["create"]["rows"][0]["action"] == "create", explain
    assert s["guest-ready"]["ok"], explain

    live = s["balloon"]
    (row,) = live["rows"]
    assert row["action"] == "update-live", explain
    assert row["changes"] == [
        {"key": "balloon.target", "old": None, "new": 128 << 20, "apply": "live: balloon"}
    ], explain
    assert live["apply_rc"] == 0 and "live: balloon" in live["apply"], explain
    assert live["pid"] == s["create"]["pid"], explain  # the same engine: no restart
    assert s["guest-balloon"]["ok"], explain
    first = parse_reports(boot(res.stdout, 1))
    balloon = next(r for r in first if r.kind == "balloon")
    before = int(balloon.fields["avail_kb"])
    after = int(balloon.text.rsplit("->", 1)[1])
    assert before - after > 64 * MIB_KB, balloon.text  # the guest gave memory back, same boot
    assert sum(1 for r in first if r.kind == "mem") == 1, explain  # one boot

    restart = s["memory"]
    (row,) = restart["rows"]
    assert row["action"] == "restart", explain
    assert {c["key"] for c in row["changes"]} >= {"memory.size"}, explain
    assert restart["apply_rc"] == 0 and restart["pid"] != live["pid"], explain
    assert s["guest-restarted"]["ok"], explain
    mem1 = int(next(r for r in first if r.kind == "mem").fields["total_kb"])
    second = parse_reports(boot(res.stdout, 2))
    mem2 = int(next(r for r in second if r.kind == "mem").fields["total_kb"])
    assert 120 * MIB_KB < mem2 - mem1 < 136 * MIB_KB, (mem1, mem2)  # 384M vs 256M

    again = s["again"]
    assert again["apply_rc"] == 0 and [r["action"] for r in again["rows"]] == ["unchanged"]
