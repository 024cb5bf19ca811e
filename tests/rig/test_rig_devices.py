"""svlaunch's virtio-mmio devices under real Linux drivers: the builtin engine in the nested rig.

Two boots (CI time: each is a whole L1 + L2 run under TCG) serve every assertion:
- ``tests/rig/devices/devices.toml``: a writable and a read-only disk, a tap NIC, a rate-limited
  rng, a virtio console on a file chardev, a balloon and vhost-vsock, all in one guest;
- ``tests/rig/devices/vhost-net.toml``: a NIC whose rings the L1 kernel serves (vhost-net).
The guest (scripts/guest/init) reports what it sees as SVREPORT lines; host-side actions that
must happen while the guest runs (QMP ``balloon``, a vsock exchange) come from
``tests/rig/devices/l1_job.py``, started in L1 by ``--l1-setup`` and triggered by the guest's
console text. Disk images live under build/rig-devices/ (the manifests name them there).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from rigutil import GUEST, REPO, RigResult, job, l1_job, run_rig

pytestmark = pytest.mark.rig

MIB = 2**20
CASES = REPO / "tests" / "rig" / "devices"
DATA = REPO / "build" / "rig-devices"
YES_1M = (b"svlaunch\n" * (MIB // 9 + 1))[:MIB]
HVC_TEXT = "hello-hvc"  # devices.toml's svreport.hvc=
GUEST_MEM = 256 * MIB
# Guest memory left after inflation; not half of GUEST_MEM, so that mixing up "target" and
# "balloon size" (the QMP value is the target) shows.
BALLOON_TARGET = 160 * MIB
RNG_MAX_BYTES, RNG_PERIOD_MS, RNG_READ = 1024, 1000, 4096  # devices.toml's rng and svreport.rng
VSOCK_CID = 42
VSOCK_PORT = 5000  # devices.toml's svreport.vsock (the guest's echo, scripts/guest/svvsock.c)


@pytest.fixture(scope="module")
def guest() -> Path:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    return GUEST


def tap_setup(addr: str) -> str:
    return f"ip tuntap add tap0 mode tap && ip addr add {addr} dev tap0 && ip link set tap0 up"


@dataclass(frozen=True)
class DevicesRun:
    res: RigResult
    data_before: bytes
    ro_before: bytes
    data: Path
    ro: Path
    hvc: Path


@pytest.fixture(scope="module")
def devices_run(guest: Path) -> DevicesRun:
    DATA.mkdir(parents=True, exist_ok=True)
    data, ro, hvc = DATA / "data.img", DATA / "ro.img", DATA / "hvc.txt"
    data_before, ro_before = os.urandom(3 * MIB), os.urandom(MIB)
    data.write_bytes(data_before)
    ro.write_bytes(ro_before)
    hvc.unlink(missing_ok=True)
    setup = tap_setup("169.254.10.1/24") + " && " + l1_job(
        "--wait-file", str(hvc), "--wait-text", HVC_TEXT, "--vm", "rig-devices",
        "--balloon", str(BALLOON_TARGET), "--vsock-cid", str(VSOCK_CID),
        "--vsock-port", str(VSOCK_PORT),
    )  # fmt: skip
    res = run_rig(CASES / "devices.toml", timeout=400, l1_setup=setup)
    assert res.returncode == 0, res.explain()
    assert res.done, res.explain()
    return DevicesRun(res, data_before, ro_before, data, ro, hvc)


def test_disks_show_their_sizes_serials_ro_flags_and_content(devices_run: DevicesRun):
    r = devices_run
    blks = {b.fields["serial"]: b for b in r.res.all("blk")}
    assert sorted(blks) == ["data0", "ro1"], r.res.explain()
    data, ro = blks["data0"], blks["ro1"]
    assert data.args[0] == "vda", "the writable disk must be vda for svreport.write=vda"
    assert data.fields["sectors"] == str(3 * MIB // 512)
    assert ro.fields["sectors"] == str(MIB // 512)
    assert (data.fields["ro"], ro.fields["ro"]) == ("0", "1")
    # The report reads the first MiB before the guest overwrites it.
    assert data.fields["sha256_1m"] == hashlib.sha256(r.data_before[:MIB]).hexdigest()
    assert ro.fields["sha256_1m"] == hashlib.sha256(r.ro_before).hexdigest()


def test_guest_write_comes_back_to_the_host_file_byte_for_byte(devices_run: DevicesRun):
    r = devices_run
    assert r.res.first("wrote").fields["sha256"] == hashlib.sha256(YES_1M).hexdigest()
    back = r.data.read_bytes()
    assert len(back) == len(r.data_before)
    assert back[:MIB] == YES_1M
    assert back[MIB:] == r.data_before[MIB:]
    # The guest also tried to write the read-only disk (svreport.forcewrite); a clean run
    # (poweroff, engine exit) leaves its file as it was. tests/rig/test_rig_data_safety.py kills.
    assert r.res.first("forcewrite").args == ("vdb", "failed"), r.res.explain()
    assert r.ro.read_bytes() == r.ro_before


def test_nic_gets_its_mac_and_pings_the_l1_tap(devices_run: DevicesRun):
    res = devices_run.res
    assert [n.fields["mac"] for n in res.all("net")] == ["52:54:00:12:34:56"]
    assert res.first("ping").text == "169.254.10.1 ok", res.explain()


def test_console_text_reaches_the_host_chardev_file(devices_run: DevicesRun):
    res = devices_run.res
    assert [h.text for h in res.all("hvc")] == ["hvc0"]
    assert res.first("hvc_wrote").text == "hvc0"
    assert devices_run.hvc.read_bytes().strip() == HVC_TEXT.encode()


def test_rng_reads_respect_the_rate_limit(devices_run: DevicesRun):
    res = devices_run.res
    assert res.first("rng").text.startswith("virtio_rng")
    read = res.first("rng_read")
    assert read.args == (str(RNG_READ),), res.explain()
    # The bucket starts full (max-bytes), then refills at max-bytes per period.
    floor_ms = (RNG_READ - RNG_MAX_BYTES) / RNG_MAX_BYTES * RNG_PERIOD_MS
    ms = int(read.fields["ms"])
    assert ms >= 0.9 * floor_ms, f"{RNG_READ} bytes in {ms} ms beats the limit"
    assert ms < 10 * floor_ms, f"{RNG_READ} bytes took {ms} ms: throttled far below the limit"


def test_balloon_inflation_lowers_the_guests_available_memory(devices_run: DevicesRun):
    res = devices_run.res
    assert job(res, "balloon")["rc"] == "0", res.explain()
    assert job(res, "query-balloon")["actual"] == str(BALLOON_TARGET), res.explain()
    b = res.first("balloon")  # "avail_kb=A -> B": MemAvailable before and after
    before = int(b.fields["avail_kb"])
    after = int(b.args[-1])
    inflated_kb = (GUEST_MEM - BALLOON_TARGET) // 1024
    assert 0.9 * inflated_kb <= before - after <= 1.15 * inflated_kb, b.text


def test_vsock_line_goes_to_the_guest_echo_and_back_through_vhost_vsock(devices_run: DevicesRun):
    res = devices_run.res
    ours = job(res, "vsock", cid=str(VSOCK_CID), port=str(VSOCK_PORT))
    assert ours["result"] != "no-vhost-vsock", "the rig's L1 loads vhost_vsock: " + res.explain()
    assert res.first("vsock_listening").args == (str(VSOCK_PORT),), res.explain()
    # L1 -> guest: the guest's echo read the job's line (a fresh random word and a newline)...
    sent = ours.get("sent", "")
    assert sent.startswith("rig-"), res.explain()
    guest = res.first("vsock")
    assert guest.args == (str(VSOCK_PORT), "ok"), res.explain()
    assert guest.fields["bytes"] == str(len(sent) + 1), res.explain()
    # ... and guest -> L1: the job read the echo of exactly that line.
    assert ours["result"] == "echo", res.explain()
    assert ours["reply"] == f"svlaunch-echo:{sent}", res.explain()


def test_vsock_connects_to_an_unheard_port_or_cid_are_refused(devices_run: DevicesRun):
    res = devices_run.res
    # A port the guest does not listen on: its virtio transport answers with a reset (a lost
    # request would time out). A CID no VM holds fails at once with ENODEV.
    port = str(VSOCK_PORT + 1)
    assert job(res, "vsock-refused", cid=str(VSOCK_CID), port=port)["result"] == "ECONNRESET"
    other = job(res, "vsock-refused", cid=str(VSOCK_CID + 1), port=str(VSOCK_PORT))
    assert other["result"] == "ENODEV", res.explain()


def test_vhost_net_nic_pings_the_l1_tap_through_the_kernel(guest: Path):
    setup = tap_setup("169.254.11.1/24") + " && " + l1_job("--vhost-thread", "--timeout", "200")
    res = run_rig(CASES / "vhost-net.toml", timeout=300, l1_setup=setup)
    assert res.returncode == 0, res.explain()
    assert [n.fields["mac"] for n in res.all("net")] == ["52:54:00:ab:cd:01"]
    assert res.first("ping").text == "169.254.11.1 ok", res.explain()
    worker = job(res, "vhost")
    assert worker["thread"].startswith("vhost-") and worker["owner"] == "python3", worker
