"""vhost-vsock: argument checks and the clear error on hosts without /dev/vhost-vsock.

The data path is the host kernel's; it is exercised in the nested rig, where the device exists.
"""

from __future__ import annotations

import os

import pytest

from engine.virtio.vhost import VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING
from engine.virtio.vsock import Vsock
from launcher.errors import HostError


@pytest.mark.parametrize("cid", [0, 1, 2, (1 << 32) - 1])
def test_reserved_cids_are_refused(cid: int) -> None:
    with pytest.raises(HostError, match="guest-cid"):
        Vsock("vsock0", cid)


@pytest.mark.skipif(os.path.exists("/dev/vhost-vsock"), reason="this host has /dev/vhost-vsock")
def test_missing_vhost_vsock_names_the_device_and_the_fix() -> None:
    with pytest.raises(HostError, match="/dev/vhost-vsock does not exist") as e:
        Vsock("vsock0", 3)
    assert "modprobe vhost_vsock" in e.value.hint


def test_ioctl_numbers_match_linux_vhost_h() -> None:
    # _IOW(0xAF, 0x60, __u64) and _IOW(0xAF, 0x61, int)
    assert VHOST_VSOCK_SET_GUEST_CID == (1 << 30) | (8 << 16) | (0xAF << 8) | 0x60
    assert VHOST_VSOCK_SET_RUNNING == (1 << 30) | (4 << 16) | (0xAF << 8) | 0x61


@pytest.mark.skipif(
    not os.path.exists("/dev/vhost-vsock"), reason="needs /dev/vhost-vsock (rig L1)"
)
def test_device_opens_and_offers_version_1_features() -> None:
    dev = Vsock("vsock0", 42)
    try:
        assert dev.read_config(0, 8) == (42).to_bytes(8, "little")
        assert dev.kernel_queues == {0, 1}
    finally:
        dev.close()
