"""Snapshot, kill, restore and clones of a real Linux guest (nested rig; issue 10's "Done when").

One L1 run (tests/rig/snapshot/l1_snapshot.py does what a user does, with the svlaunch CLI):
the Linux test guest boots and waits for its power button; it is snapshotted, its engine is
SIGKILLed, and it is restored: its devices still work (the disk reads back, the console
answers, the NIC pings), its clock and uptime go on from where they were, and the power
button powers it off cleanly. Then two clones of the same snapshot run side by side, each
with its own MAC, tap and vsock CID, and both answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess

import pytest
from rigutil import GUEST, REPO, RigResult, parse_reports, run_rig_raw

pytestmark = pytest.mark.rig

DRIVER = REPO / "tests" / "rig" / "snapshot" / "l1_snapshot.py"
DATA = REPO / "build" / "rig-snapshot"
TAPS = {"tap0": "169.254.10.1", "tap1": "169.254.11.1", "tap2": "169.254.12.1"}
MACS = {
    "restored": "52:54:00:12:34:56",
    "clone1": "52:54:00:00:00:01",
    "clone2": "52:54:00:00:00:02",
}
RIG_TIMEOUT = 1200  # one L1 and one L2 boot under TCG, three restores; the machine may be shared


def steps(stdout: str) -> dict[str, dict]:
    out = {}
    for line in stdout.splitlines():
        at = line.find("RIGSNAP {")
        if at >= 0:
            fields = json.loads(line[at + 8 :])
            out[fields["step"]] = fields
    return out


def serials(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"RIGSNAP-SERIAL (\S+)\n(.*?)\nRIGSNAP-SERIAL-END", stdout, re.S))


@pytest.fixture(scope="module")
def run() -> tuple[RigResult, bytes]:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    DATA.mkdir(parents=True, exist_ok=True)
    disk = DATA / "disk.img"
    content = os.urandom(4 << 20)
    disk.write_bytes(content)
    kernel, initrd = GUEST / "vmlinuz", GUEST / "initrd.img"
    setup = " && ".join(
        f"ip tuntap add {t} mode tap && ip addr add {a}/24 dev {t} && ip link set {t} up"
        for t, a in TAPS.items()
    )
    cmd = f"python3 {DRIVER} --kernel {kernel} --initrd {initrd} --disk {disk} --work /tmp/rigsnap"
    res = run_rig_raw(
        cmd, files=[DRIVER, kernel, initrd, disk], l1_setup=setup, timeout=RIG_TIMEOUT
    )
    assert res.returncode == 0, res.explain()
    return res, content


def test_snapshot_kill_and_restore_of_a_waiting_linux_guest(run) -> None:
    res, content = run
    explain = res.explain()
    st, out = steps(res.stdout), serials(res.stdout)
    assert st["up"]["rc"] == 0 and st["booted"]["seen"], explain
    assert st["snapshot"]["rc"] == 0, explain
    assert st["killed"]["gone"] and st["files"]["names"] == ["memory", "state"], explain
    assert st["restore"]["rc"] == 0, explain

    before = {r.kind: r for r in parse_reports(out["tmpl"])}
    assert before["ping"].args == ("169.254.10.1", "ok"), explain
    after = parse_reports(out["restored"])
    kinds = [r.kind for r in after]
    assert "cpus" not in kinds and "done" not in kinds, "the restored guest booted again"
    # the console (both ways), the NIC, the disk, the entropy source
    assert st["resume-restored"]["done"] and st["resume-restored"]["answer"].startswith(
        "resumed"
    ), explain
    got = {r.kind: r for r in after}
    assert got["net"].fields["mac"] == MACS["restored"], explain
    assert got["ping"].args == ("169.254.10.1", "ok"), explain
    assert got["blk_read"].fields["sha256_1m"] == hashlib.sha256(content[: 1 << 20]).hexdigest()
    assert "reseeded" in kinds, explain
    # the clocks go on from the snapshot: uptime did not restart, the wall clock did not jump
    u0, d0 = float(before["agent"].fields["uptime"]), int(before["agent"].fields["date"])
    u1, d1 = float(got["resumed"].fields["uptime"]), int(got["resumed"].fields["date"])
    assert u0 <= u1 < u0 + 120, (u0, u1)
    assert abs((d1 - d0) - (u1 - u0)) <= 2, (u0, u1, d0, d1)
    # and the power button powers it off
    pd = st["powerdown-restored"]
    assert pd["rc"] == 0 and pd["gone"], explain
    assert kinds.index("resume") < kinds.index("powerbutton"), explain  # "resume done" first
    assert "reboot: Power down" in out["restored"], explain
    assert pd["ended"]["cause"] == "guest-shutdown" and pd["ended"]["code"] == 0, pd
    assert "Kernel panic" not in out["restored"], explain


def test_two_clones_run_side_by_side_with_their_own_mac_and_cid(run) -> None:
    res, _ = run
    explain = res.explain()
    st, out = steps(res.stdout), serials(res.stdout)
    assert st["restore-clone1"]["rc"] == 0 and st["restore-clone2"]["rc"] == 0, explain
    assert st["side-by-side"]["running"] == ["clone1", "clone2"], explain
    for n, peer in (("clone1", "169.254.11.1"), ("clone2", "169.254.12.1")):
        reports = {r.kind: r for r in parse_reports(out[n])}
        assert st[f"resume-{n}"]["done"], explain
        assert st[f"resume-{n}"]["answer"].startswith("resumed "), explain  # the console answers
        assert reports["net"].fields["mac"] == MACS[n], explain
        assert reports["ping"].args == (peer, "ok"), explain
        # a reset from the guest: it answers as its new CID (the transport reset made it re-read)
        assert st[f"vsock-{n}"]["result"] == "ECONNRESET", explain
        assert st[f"powerdown-{n}"]["gone"] and "reboot: Power down" in out[n], explain
        assert st[f"powerdown-{n}"]["ended"]["cause"] == "guest-shutdown", explain
