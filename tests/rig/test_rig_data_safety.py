"""Data safety with a real Linux guest: what the guest flushed survives SIGKILL of the engine, and
a read-only drive's file stays bit-identical even when the guest insists on writing it.

One rig run. The guest (scripts/guest/init knobs, in command-line order) first tries as hard as a
stock guest can to write the read-only disk (``svreport.forcewrite``: BLKROSET to clear the flag,
then a write with fsync; Linux keeps a disk whose device offers VIRTIO_BLK_F_RO read-only, so the
engine's own refusal of write requests is tested with a driver that ignores the flag, in
tests/unit/test_virtio_blk.py), then writes 4 MiB of fresh random bytes to the
writable disk and fsyncs them (``svreport.fsync``: reports their hash), then writes a word to its
virtio console, whose file the L1 job watches: it SIGKILLs the engine at once. The guest waits to be
killed (``svreport.wait=kill``), so nothing after the fsync (no poweroff, no engine exit path) can
help. L1 writes both disk files back to the host, where they are compared.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from rigutil import GUEST, REPO, RigResult, job, l1_job, run_rig_raw, svlaunch_up_cmd

pytestmark = pytest.mark.rig

MiB = 1 << 20
FSYNC_KIB = 4096
SIGNAL = "svlaunch-synced"


@dataclass(frozen=True)
class Run:
    res: RigResult
    data: Path
    data_before: bytes
    ro: Path
    ro_before: bytes


def manifest(tmp: Path, data: Path, ro: Path, hvc: Path) -> Path:
    cmdline = " ".join(
        [
            "console=ttyS0 quiet reboot=k panic=1 pci=off",
            "svreport.forcewrite=vdb",
            f"svreport.fsync=vda,{FSYNC_KIB}",
            f"svreport.hvc={SIGNAL}",
            "svreport.wait=kill",
        ]
    )
    path = tmp / "data-safety.toml"
    path.write_text(
        f"""name = "rig-data-safety"
serial = "stdio"
[machine]
type = "microvm"
[cpu]
cpus = 1
[memory]
size = "256M"
[boot]
kernel = "{GUEST / "vmlinuz"}"
initrd = "{GUEST / "initrd.img"}"
cmdline = "{cmdline}"
[drives.data0]
file = "{data}"
serial = "data0"
direct = false  # L1 keeps the run's files in its initramfs, which has no O_DIRECT
[drives.ro1]
file = "{ro}"
serial = "ro1"
readonly = true
direct = false
[chardevs.hvc]
backend = "file"
path = "{hvc}"
[virtio-serial]
id = "vser0"
[consoles.con0]
chardev = "hvc"
"""
    )
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    tmp = tmp_path_factory.mktemp("data-safety")
    data, ro, hvc = tmp / "data.img", tmp / "ro.img", tmp / "hvc.txt"
    data_before, ro_before = os.urandom(8 * MiB), os.urandom(2 * MiB)
    data.write_bytes(data_before)
    ro.write_bytes(ro_before)
    hvc.write_bytes(b"")
    vm = manifest(tmp, data, ro, hvc)
    res = run_rig_raw(
        svlaunch_up_cmd(vm),
        files=[GUEST / "vmlinuz", GUEST / "initrd.img", vm],
        writeback=[data, ro, hvc],  # the read-only file too: any change would come back
        l1_setup=l1_job("--wait-file", str(hvc), "--wait-text", SIGNAL, "--kill-engine"),
        timeout=300,
    )
    assert not res.timed_out, res.explain()
    return Run(res, data, data_before, ro, ro_before)


def test_the_engine_was_killed_right_after_the_guests_fsync(run: Run) -> None:
    res = run.res
    killed = job(res, "killed")
    assert killed["pids"] != "-", res.explain()  # one engine, SIGKILLed
    assert res.returncode not in (0, None), res.explain()  # `svlaunch up` saw its engine die
    assert res.first("fsynced").fields.get("bytes") == str(FSYNC_KIB * 1024), res.explain()
    assert "reboot: Power down" not in res.stdout, res.explain()  # no clean exit path ran
    blks = {b.fields["serial"]: b.args[0] for b in res.all("blk")}
    assert blks == {"data0": "vda", "ro1": "vdb"}, res.explain()


def test_every_fsynced_byte_is_in_the_host_file(run: Run) -> None:
    guest_hash = run.res.first("fsynced").fields["sha256"]
    back = run.data.read_bytes()
    n = FSYNC_KIB * 1024
    assert len(back) == len(run.data_before)
    assert hashlib.sha256(back[:n]).hexdigest() == guest_hash
    assert back[n:] == run.data_before[n:]


def test_a_readonly_drive_is_bit_identical_after_the_guest_tried_to_write_it(run: Run) -> None:
    forced = run.res.first("forcewrite")
    assert forced.args == ("vdb", "failed"), run.res.explain()
    assert forced.fields["ro"] == "1"  # F_RO: the guest kernel keeps the disk read-only
    assert forced.fields["sha256_1m"] == hashlib.sha256(run.ro_before[:MiB]).hexdigest()
    assert run.ro.read_bytes() == run.ro_before
