"""vhost-vsock: argument checks and the clear error on hosts without /dev/vhost-vsock.

The device on a real /dev/vhost-vsock runs in the rig's L1 (tests/rig/test_rig_vsock.py), and the
data path with a Linux guest in tests/rig/test_rig_devices.py.
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
