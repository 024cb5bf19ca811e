"""virtio-net on a real tap in a network namespace this test creates (link-local addresses only).

The Python driver plays the guest at 169.254.77.2; the namespace's kernel answers at
169.254.77.1: ARP, ICMP echo, and a UDP datagram sent from the namespace to the guest.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from nettest import LoopThread, close_in, csum, netns, open_in
from virtio_driver import Allocator, Driver

from engine.machine.memory import GuestMemory
from engine.virtio import net as N
from engine.virtio import net_features as NF
from engine.virtio.mmio import MmioTransport
from engine.virtio.tap import Tap
from launcher.errors import HostError

pytestmark = pytest.mark.root
MiB = 1 << 20
GUEST_MAC = bytes.fromhex("525400aabbcc")
GUEST_IP = socket.inet_aton("169.254.77.2")
HOST_IP = socket.inet_aton("169.254.77.1")
VNET = bytes(12)


def arp_request() -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, GUEST_IP, bytes(6), HOST_IP)
    return b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + arp


def icmp_echo(dst_mac: bytes, ident: int) -> bytes:
    payload = b"svlaunch-ping" * 4
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, GUEST_IP, HOST_IP)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + GUEST_MAC + b"\x08\x00" + ip + icmp


@pytest.fixture
def ns():
    with netns(f"svlt{os.getpid()}") as name:
        yield name


def frames(lt: LoopThread, rxq, want, timeout: float = 5.0) -> bytes:
    """Collect RX frames until ``want(frame)`` is true; repost buffers as they are used."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for c in lt.call(rxq.collect):
            frame = c.data[12 : c.length]
            lt.call(lambda: (rxq.add([], [2048]), rxq.kick()))
            if want(frame):
                return frame
        time.sleep(0.01)
    raise AssertionError("expected frame not received")


def test_arp_icmp_and_udp_through_a_tap_in_a_namespace(ns: str) -> None:
    from pyroute2 import NetNS, netns

    tapname = f"svlt{os.getpid()}"[:15]
    netns.pushns(ns)
    try:
        tap = Tap.open(tapname, 1)  # created by pyroute2 inside the namespace
    finally:
        netns.popns()
    assert tap.created
    with NetNS(ns) as ipr:
        idx = ipr.link_lookup(ifname=tapname)[0]
        ipr.addr("add", index=idx, address="169.254.77.1", prefixlen=24)
        ipr.link("set", index=idx, state="up")
        ipr.neigh("add", dst="169.254.77.2", lladdr=GUEST_MAC.hex(":"), ifindex=idx, state=0x80)
    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 16 * MiB)])
    dev = N.Net("net0", tap, mac="52:54:00:aa:bb:cc", loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 16 * MiB))
    try:
        feats = lt.call(drv.start)
        assert feats & 1 << NF.VIRTIO_NET_F_MAC
        assert drv.config_bytes(0, 6) == GUEST_MAC
        assert drv.config(6, 2) == NF.VIRTIO_NET_S_LINK_UP
        rxq, txq = drv.queues[0], drv.queues[1]
        lt.call(lambda: ([rxq.add([], [2048]) for _ in range(16)], rxq.kick()))

        def send(frame: bytes) -> None:
            lt.call(lambda: (txq.add([VNET, frame], []), txq.kick()))

        send(arp_request())
        reply = frames(lt, rxq, lambda f: f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02")
        host_mac = reply[6:12]
        assert reply[:6] == GUEST_MAC and reply[28:32] == HOST_IP

        send(icmp_echo(host_mac, 0x4242))
        echo = frames(lt, rxq, lambda f: f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 0)
        assert echo[38:40] == b"\x42\x42" and echo[26:30] == HOST_IP

        netns.pushns(ns)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            netns.popns()
        with s:
            s.sendto(b"hello guest", ("169.254.77.2", 9999))
        udp = frames(lt, rxq, lambda f: f[12:14] == b"\x08\x00" and f[23] == 17)
        assert udp.endswith(b"hello guest")
        assert dev.stats.bytes_in > 0 and dev.stats.bytes_out > 0
    finally:
        lt.stop()
        close_in(ns, t)
        mem.close()
    with NetNS(ns) as ipr:
        assert not ipr.link_lookup(ifname=tapname)  # svlaunch deleted the tap it created


def test_tx_chain_longer_than_a_frame_is_dropped_without_a_copy(ns: str) -> None:
    """One TX request of 1024 aliased 64 KiB buffers (64 MiB on a 16 MiB guest) is longer than
    any frame a tap takes: dropped and counted, at no host cost (docs/virtio.md)."""
    from virtio_driver import HostCost

    tap = open_in(ns, f"svlb{os.getpid()}"[:15], 1)
    mem = GuestMemory.anonymous([(0, 16 * MiB)])
    mem.fill(8 * MiB, 8 * MiB, 0x5A)
    dev = N.Net("net0", tap)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    try:
        drv.start()
        txq = drv.queues[1]
        txq.post_table([(8 * MiB, 12, 0)] + [(8 * MiB, 64 * 1024, 0)] * 1023)
        with HostCost() as cost:
            txq.kick()
        (done,) = txq.collect()
        assert done.length == 0 and dev.tx_dropped == 1 and dev.stats.bytes_in == 0
        assert cost.peak_mib < 4 and cost.cpu_s < 0.05
    finally:
        close_in(ns, t)
        mem.close()


def test_existing_tap_is_not_deleted_and_mq_needs_multi_queue(ns: str) -> None:
    from pyroute2 import NetNS, netns

    tapname = f"svlu{os.getpid()}"[:15]
    with NetNS(ns) as ipr:
        ipr.link(
            "add", ifname=tapname, kind="tuntap", mode="tap", ifr={"no_pi": True, "vnet_hdr": True}
        )
    netns.pushns(ns)
    try:
        tap = Tap.open(tapname, 1)
        assert not tap.created
        tap.close()
        with pytest.raises(HostError, match="without multi_queue"):
            Tap.open(tapname, 2)
    finally:
        netns.popns()
    with NetNS(ns) as ipr:
        assert ipr.link_lookup(ifname=tapname)


def test_a_tap_held_by_another_vm_is_refused_in_words(ns: str) -> None:
    """A second opener of a single-queue tap gets EBUSY: the error says who, not 'run as root'."""
    from pyroute2 import netns

    netns.pushns(ns)
    try:
        first = Tap.open(f"svlb{os.getpid()}"[:15], 1)
        try:
            with pytest.raises(HostError, match="in use by another process") as err:
                Tap.open(first.name, 1)
            assert "root" not in (err.value.hint or "")
            assert "own tap name" in (err.value.hint or "")
        finally:
            first.close()
    finally:
        netns.popns()


def test_multiqueue_ctrl_vq_pairs_set(ns: str) -> None:
    tap = open_in(ns, f"svlm{os.getpid()}"[:15], 2)
    mem = GuestMemory.anonymous([(0, 16 * MiB)])
    dev = N.Net("net0", tap, queue_pairs=2)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 16 * MiB))
    try:
        feats = drv.start()
        assert feats & 1 << NF.VIRTIO_NET_F_MQ and feats & 1 << NF.VIRTIO_NET_F_CTRL_VQ
        assert drv.config(8, 2) == 2 and t.num_queues == 5
        ctrl = drv.queues[4]
        ctrl.add([struct.pack("<BBH", NF.VIRTIO_NET_CTRL_MQ, 0, 2)], [1])
        ctrl.add([struct.pack("<BBH", NF.VIRTIO_NET_CTRL_MQ, 0, 3)], [1])
        ctrl.kick()
        ok, bad = ctrl.collect()
        assert ok.data == bytes([NF.VIRTIO_NET_OK]) and bad.data == bytes([NF.VIRTIO_NET_ERR])
        assert dev.active_pairs == 2
    finally:
        close_in(ns, t)
        mem.close()


def test_bad_mac_and_missing_vhost_are_clear_errors() -> None:
    with pytest.raises(HostError, match="six hex pairs"):
        NF.parse_mac("52:54:00:zz:00:01")
    with pytest.raises(HostError, match="multicast"):
        NF.parse_mac("01:00:00:00:00:01")
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    with pytest.raises(HostError, match="/dev/vhost-net does not exist") as e:
        N.Net("net0", Tap("none", [-1], created=False), vhost=True)
    assert "modprobe vhost_net" in e.value.hint
