"""vhost-vsock's host side on a real /dev/vhost-vsock: the rig's L1 has one (its kernel loads
vhost_vsock), this machine does not. The device model opens it, becomes its owner and reads the
kernel's features; the data path (a guest's echo over AF_VSOCK) is in test_rig_devices.py.
"""

from __future__ import annotations

import json
import shlex

import pytest
from rigutil import run_rig_raw

pytestmark = pytest.mark.rig

CID = 42

#: Runs in L1 (python3 with the project on PYTHONPATH): one JSON line of what the device saw.
L1_CHECK = f"""
import json, os
from engine.virtio.device import VIRTIO_F_VERSION_1
from engine.virtio.vsock import Vsock
out = {{"exists": os.path.exists("/dev/vhost-vsock")}}
dev = Vsock("vsock0", {CID})
try:
    out["config"] = dev.read_config(0, 8).hex()
    out["kernel_queues"] = sorted(dev.kernel_queues)
    out["queues"] = dev.num_queues
    out["kernel_features"] = dev.backend.get_features()
    out["ring_features"] = dev.ring_features
    out["offered"] = dev.avail_features
    out["version_1"] = VIRTIO_F_VERSION_1
finally:
    dev.close()
print("VSOCKCHECK " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def seen() -> dict:
    res = run_rig_raw(f"python3 -c {shlex.quote(L1_CHECK)}", timeout=240)
    assert res.returncode == 0, res.explain()
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("VSOCKCHECK ")), None)
    assert line is not None, res.explain()
    return json.loads(line.removeprefix("VSOCKCHECK "))


def test_the_rig_l1_has_vhost_vsock(seen: dict) -> None:
    assert seen["exists"] is True


def test_device_opens_and_configures_the_guest_cid(seen: dict) -> None:
    assert seen["config"] == CID.to_bytes(8, "little").hex()
    assert seen["queues"] == 3  # rx, tx and the VMM's event queue
    assert seen["kernel_queues"] == [0, 1]


def test_the_kernels_features_are_passed_on_only_where_they_are_the_devices(seen: dict) -> None:
    kernel = seen["kernel_features"]
    assert kernel >> seen["version_1"] & 1  # vhost speaks virtio 1.x
    assert seen["ring_features"] == kernel & (1 << 28 | 1 << 29)  # indirect desc, event idx
    assert seen["offered"] & ~(1 << 1) == 0  # at most VIRTIO_VSOCK_F_SEQPACKET, nothing of vhost's
