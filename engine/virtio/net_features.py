"""virtio-net's feature negotiation (virtio 1.2 §5.1.3): the feature bits, which offload
needs which (refused at FEATURES_OK otherwise), the tap offloads an acked set allows, the
bits vhost-net takes, and the MAC address parser.

Apart from ``net.py`` because it is decided once, at probe and FEATURES_OK, never per frame:
the device module keeps the queues and the RX/TX data path.
"""

from __future__ import annotations

import random

from engine.errors import HostError
from engine.virtio.device import (
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    bit,
)
from engine.virtio.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN

VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22

VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_CTRL_MQ = 4
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1

OFFLOAD_FEATURES = (
    bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
)
#: §5.1.3.1: each offload and the feature it needs (any one of the set). A driver that acks
#: one without its requirement is refused at FEATURES_OK.
FEATURE_NEEDS = {
    VIRTIO_NET_F_GUEST_TSO4: bit(VIRTIO_NET_F_GUEST_CSUM),
    VIRTIO_NET_F_GUEST_TSO6: bit(VIRTIO_NET_F_GUEST_CSUM),
    VIRTIO_NET_F_GUEST_ECN: bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6),
    VIRTIO_NET_F_HOST_TSO4: bit(VIRTIO_NET_F_CSUM),
    VIRTIO_NET_F_HOST_TSO6: bit(VIRTIO_NET_F_CSUM),
    VIRTIO_NET_F_HOST_ECN: bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6),
    VIRTIO_NET_F_MQ: bit(VIRTIO_NET_F_CTRL_VQ),
}
#: The acked features vhost-net itself implements (linux/vhost.h VHOST_NET_FEATURES, minus
#: VIRTIO_F_ACCESS_PLATFORM: no IOTLB here). MAC, STATUS, CTRL_VQ, MQ and the offloads are this
#: device's or the tap's, and VHOST_SET_FEATURES refuses any bit it does not know (EOPNOTSUPP).
VHOST_NET_PASS = (
    bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_F_RING_INDIRECT_DESC)
    | bit(VIRTIO_F_RING_EVENT_IDX)
    | bit(VIRTIO_F_VERSION_1)
)


def parse_mac(mac: str | None) -> bytes:
    """``52:54:00:12:34:56`` → 6 bytes; None → a random locally administered unicast MAC."""
    if mac is None:
        return bytes([0x52, 0x54, 0x00, *random.randbytes(3)])
    parts = mac.split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(parts) != 6 or len(raw) != 6 or any(len(p) != 2 for p in parts):
        raise HostError(
            f"virtio-net: MAC address {mac!r} is not six hex pairs",
            hint="e.g. mac=52:54:00:12:34:56",
        )
    if raw[0] & 1:
        raise HostError(
            f"virtio-net: MAC address {mac} is a multicast address",
            hint="clear bit 0 of the first byte",
        )
    return raw


def tun_offloads(acked: int) -> int:
    """TUNSETOFFLOAD flags for a driver that acked ``acked``: what the tap may hand the guest
    (partial checksums, TSO frames, ECN on them), exactly the GUEST_* offloads it accepted."""
    if not acked & bit(VIRTIO_NET_F_GUEST_CSUM):
        return 0
    tun = TUN_F_CSUM
    if acked & bit(VIRTIO_NET_F_GUEST_TSO4):
        tun |= TUN_F_TSO4
    if acked & bit(VIRTIO_NET_F_GUEST_TSO6):
        tun |= TUN_F_TSO6
    if tun & (TUN_F_TSO4 | TUN_F_TSO6) and acked & bit(VIRTIO_NET_F_GUEST_ECN):
        tun |= TUN_F_TSO_ECN
    return tun


def vhost_net_features(acked: int) -> int:
    """What to give VHOST_SET_FEATURES for a driver that acked ``acked``.

    VERSION_1 is always set: it makes vhost-net and the tap agree on the 12-byte header.
    """
    return acked & VHOST_NET_PASS | bit(VIRTIO_F_VERSION_1)
