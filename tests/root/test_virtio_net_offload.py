"""virtio-net's data path against a real tap in a namespace of the test's own (link-local only):
the vnet header offloads as negotiated (TCP handshakes with the namespace's kernel, segmentation
and partial checksums both ways), batching (many frames per kick or wake-up, one interrupt per
batch, EVENT_IDX respected), a guest without RX buffers, and RX frames longer than their chain.

The Python driver (tests/support/virtio_driver.py) plays the guest at 169.254.78.2; the
namespace's kernel is 169.254.78.1.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from nettest import (
    ACK,
    ETH_IP,
    GSO_TCPV4,
    NEEDS_CSUM,
    PROTO_TCP,
    PROTO_UDP,
    SYN,
    Frame,
    LoopThread,
    address_tap,
    close_in,
    drain,
    eth,
    netns,
    open_in,
    socket_in,
    tap_stats,
    tcp,
    udp,
    vnet,
)
from virtio_driver import Allocator, Driver, HostCost

from engine.machine.memory import GuestMemory
from engine.virtio import net as N
from engine.virtio import net_features as NF
from engine.virtio.mmio import MmioTransport
from engine.virtio.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN

pytestmark = pytest.mark.root
MiB = 1 << 20
GUEST_MAC = bytes.fromhex("525400aabbcd")
GUEST_IP, HOST_IP = socket.inet_aton("169.254.78.2"), socket.inet_aton("169.254.78.1")
BIG_RX = 12 + 65550  # what Linux posts per RX chain with GUEST_TSO and no MRG_RXBUF
SMALL_RX = 12 + 1514
OFFLOADS_OFF = (
    1 << NF.VIRTIO_NET_F_GUEST_CSUM
    | 1 << NF.VIRTIO_NET_F_GUEST_TSO4
    | 1 << NF.VIRTIO_NET_F_GUEST_TSO6
    | 1 << NF.VIRTIO_NET_F_GUEST_ECN
)


class Guest:
    """One Net device on a tap in the namespace, driven by the Python driver."""

    def __init__(self, ns: str, tag: str, *, loop: bool = True) -> None:
        self.ns = ns
        self.tapname = f"svo{tag}{os.getpid()}"[:15]
        self.tap = open_in(ns, self.tapname)
        self.host_mac = address_tap(ns, self.tapname, "169.254.78.1", "169.254.78.2", GUEST_MAC)
        drain(self.tap)
        self.lt = LoopThread() if loop else None
        self.mem = GuestMemory.anonymous([(0, 32 * MiB)])
        self.dev = N.Net(
            "net0", self.tap, mac=GUEST_MAC.hex(":"), loop=self.lt.loop if self.lt else None
        )
        self.t = MmioTransport(self.dev, self.mem)
        self.drv = Driver(self.t, self.mem, Allocator(0x1000, 32 * MiB))

    def call(self, fn):
        return self.lt.call(fn) if self.lt else fn()

    def start(self, *, drop: int = 0) -> int:
        acked = self.call(lambda: self.drv.start(drop=drop))
        self.rxq, self.txq = self.drv.queues[0], self.drv.queues[1]
        return acked

    def post_rx(self, count: int, size: int) -> None:
        self.call(lambda: ([self.rxq.add([], [size]) for _ in range(count)], self.rxq.kick()))

    def send(self, *frames: bytes, hdr: bytes | None = None) -> None:
        """Post each Ethernet frame with its vnet header as one TX chain, then kick once."""

        def go() -> None:
            for f in frames:
                self.txq.add([hdr if hdr is not None else vnet(), f], [])
            self.txq.kick()

        self.call(go)

    def receive(self, want, timeout: float = 5.0, size: int = SMALL_RX) -> Frame:
        """RX frames until ``want(frame)``; each used buffer is posted again."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for c in self.call(self.rxq.collect):
                self.post_rx(1, size)
                if c.length == 0:
                    continue
                frame = Frame.parse(c.data[: c.length])
                if want(frame):
                    return frame
            time.sleep(0.005)
        raise AssertionError("expected frame not received")

    def to_host(self, payload: bytes, ethertype: int = ETH_IP) -> bytes:
        return eth(self.host_mac, GUEST_MAC, ethertype, payload)

    def close(self) -> None:
        if self.lt:
            self.lt.stop()
        close_in(self.ns, self.t)
        self.mem.close()


@pytest.fixture
def ns():
    with netns(f"svlo{os.getpid()}") as name:
        yield name


@pytest.fixture
def guest(ns):
    g = Guest(ns, "g")
    yield g
    g.close()


def is_tcp(port: int, flags: int | None = None):
    def want(f: Frame) -> bool:
        if f.ip_proto != PROTO_TCP:
            return False
        fields = f.tcp_fields()
        return fields[1] == port and (flags is None or fields[4] & flags == flags)

    return want


MSS_OPTION = struct.pack("!BBH", 2, 4, 1460)


def test_offloads_are_what_the_guest_acked_and_the_tap_is_told_so(ns) -> None:
    """TUNSETOFFLOAD carries exactly the GUEST_* offloads acked; HOST_* needs no tap flag."""
    all_acked = sum(1 << b for b in (1, 7, 8, 9))
    assert NF.tun_offloads(all_acked) == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    assert NF.tun_offloads(1 << 1) == TUN_F_CSUM
    assert NF.tun_offloads(1 << 1 | 1 << 9) == TUN_F_CSUM  # ECN without TSO: nothing to mark
    assert NF.tun_offloads(all_acked & ~(1 << 1)) == 0  # no GUEST_CSUM: nothing at all
    g = Guest(ns, "f", loop=False)
    try:
        acked = g.start()
        for b in (0, 1, 7, 8, 9, 11, 12, 13):
            assert acked >> b & 1, f"feature {b} offered and acked"
        assert not acked >> NF.VIRTIO_NET_F_MRG_RXBUF & 1, "the Python path gives a frame one chain"
        # A driver that breaks §5.1.3.1's dependencies is refused at FEATURES_OK.
        g.drv.negotiate(1 << 32 | 1 << NF.VIRTIO_NET_F_GUEST_TSO4)
        assert not g.drv.features_ok()
        g.drv.negotiate(1 << 32 | 1 << NF.VIRTIO_NET_F_HOST_ECN | 1 << NF.VIRTIO_NET_F_CSUM)
        assert not g.drv.features_ok()
    finally:
        g.close()


def test_guest_tso_frame_with_a_partial_checksum_reaches_a_socket_in_the_namespace(guest) -> None:
    """HOST_TSO4 + CSUM: one 40 KB GSO frame whose TCP checksum the guest left to the host is
    split and checksummed by the host kernel: the namespace's socket reads every byte."""
    guest.start()
    guest.post_rx(16, SMALL_RX)
    srv = socket_in(guest.ns, socket.SOCK_STREAM)
    srv.bind(("169.254.78.1", 5001))
    srv.listen(1)
    srv.settimeout(5)
    got = bytearray()
    payload = os.urandom(40_000)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            while len(got) < len(payload) and (chunk := conn.recv(65536)):
                got.extend(chunk)

    th = threading.Thread(target=serve)
    th.start()
    try:
        iss = 7000
        syn = tcp(GUEST_IP, HOST_IP, 40000, 5001, iss, 0, SYN, options=MSS_OPTION)
        guest.send(guest.to_host(syn))
        synack = guest.receive(is_tcp(40000, SYN | ACK))
        peer_seq = synack.tcp_fields()[2]
        guest.send(guest.to_host(tcp(GUEST_IP, HOST_IP, 40000, 5001, iss + 1, peer_seq + 1, ACK)))
        seg = tcp(GUEST_IP, HOST_IP, 40000, 5001, iss + 1, peer_seq + 1, ACK, payload, partial=True)
        hdr = vnet(NEEDS_CSUM, GSO_TCPV4, 14 + 20 + 20, 1448, 14 + 20, 16)
        guest.send(guest.to_host(seg), hdr=hdr)
        th.join(10)
    finally:
        srv.close()
    assert bytes(got) == payload
    assert guest.dev.tx_dropped == 0


@pytest.mark.parametrize("offloads", [True, False], ids=["guest-tso", "no-offloads"])
def test_rx_gso_frames_come_only_when_the_guest_acked_them(ns, offloads: bool) -> None:
    """The namespace sends 200 KB over TCP to the guest. With GUEST_CSUM/TSO4 acked the tap hands
    over GSO frames (vnet header TCPV4, longer than one Ethernet frame, checksum left partial);
    without, every frame is at most 1514 bytes with a complete, valid checksum."""
    g = Guest(ns, "r")
    size = BIG_RX if offloads else SMALL_RX
    try:
        acked = g.start(drop=0 if offloads else OFFLOADS_OFF)
        assert bool(acked >> NF.VIRTIO_NET_F_GUEST_TSO4 & 1) == offloads
        g.post_rx(32, size)
        cli = socket_in(ns, socket.SOCK_STREAM)
        cli.settimeout(5)
        th = threading.Thread(target=lambda: cli.connect(("169.254.78.2", 7000)))
        th.start()
        syn = g.receive(is_tcp(7000, SYN), size=size)
        sport, _, peer_seq, _, _ = syn.tcp_fields()
        iss = 90000
        synack = tcp(GUEST_IP, HOST_IP, 7000, sport, iss, peer_seq + 1, SYN | ACK,
                     options=MSS_OPTION)  # fmt: skip
        g.send(g.to_host(synack))
        th.join(5)
        cli.setblocking(False)
        try:
            cli.send(os.urandom(200_000))
        except BlockingIOError:
            pass
        frames: list[Frame] = []
        end = time.monotonic() + 3
        received = 0
        while time.monotonic() < end and received < 10 * 1448:
            for c in g.call(g.rxq.collect):
                g.post_rx(1, size)
                f = Frame.parse(c.data[: c.length])
                if is_tcp(7000)(f) and f.tcp_payload():
                    frames.append(f)
                    received += len(f.tcp_payload())
            time.sleep(0.005)
        cli.close()
    finally:
        g.close()
    assert received >= 10 * 1448, f"only {received} bytes of the first flight arrived"
    if offloads:
        big = [f for f in frames if f.gso_type == GSO_TCPV4]
        assert big and max(len(f.data) for f in big) > 1514, [len(f.data) for f in frames]
        assert all(f.flags & NEEDS_CSUM for f in big)
    else:
        assert all(f.gso_type == 0 and len(f.data) <= 1514 for f in frames)
        assert all(f.l4_checksum_ok() for f in frames)


def test_tx_drains_every_chain_of_a_kick_with_one_interrupt(ns) -> None:
    """64 datagrams posted, one kick: all reach the namespace's socket, one interrupt; with
    EVENT_IDX's used_event ahead of them, none."""
    g = Guest(ns, "t", loop=False)
    sink = socket_in(ns, socket.SOCK_DGRAM)
    sink.bind(("169.254.78.1", 6001))
    sink.settimeout(2)
    try:
        acked = g.start()
        assert acked >> NF.VIRTIO_F_RING_EVENT_IDX & 1
        frames = [
            g.to_host(udp(GUEST_IP, HOST_IP, 5555, 6001, b"batch-%03d" % i)) for i in range(64)
        ]
        before = g.drv.interrupts
        g.send(*frames[:32])
        assert g.drv.interrupts - before == 1 and g.txq.kicks == 1
        assert len(g.txq.collect()) == 32
        g.txq.set_used_event(0x8000)  # "interrupt me when used.idx passes 0x8000"
        before = g.drv.interrupts
        g.send(*frames[32:])
        assert g.drv.interrupts == before and len(g.txq.collect()) == 32
        got = {sink.recv(64) for _ in range(64)}
        assert got == {b"batch-%03d" % i for i in range(64)}
        assert g.dev.stats.requests == 64
    finally:
        sink.close()
        g.close()


def test_rx_reads_every_frame_it_has_buffers_for_in_one_wake_up(ns) -> None:
    """40 datagrams wait in the tap; the guest posts 64 buffers with one kick: all 40 arrive in
    that one pass, with one interrupt."""
    g = Guest(ns, "w", loop=False)  # no loop: RX runs only on the guest's kick
    src = socket_in(ns, socket.SOCK_DGRAM)
    try:
        g.start()
        for i in range(40):
            src.sendto(b"wake-%02d" % i, ("169.254.78.2", 7001))
        time.sleep(0.2)
        before = g.drv.interrupts
        g.post_rx(64, SMALL_RX)
        assert g.drv.interrupts - before == 1
        udp_frames = [
            Frame.parse(c.data[: c.length])
            for c in g.rxq.collect()
            if Frame.parse(c.data[: c.length]).ip_proto == PROTO_UDP
        ]
        assert [f.data[-7:] for f in udp_frames] == [b"wake-%02d" % i for i in range(40)]
    finally:
        src.close()
        g.close()


FLOOD = r"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + {secs}
n = 0
while time.monotonic() < end:
    try:
        s.sendto(b"x" * 1200, ("169.254.78.2", 7002)); n += 1
    except OSError:
        pass
print(n)
"""


def test_a_guest_without_rx_buffers_costs_the_host_nothing(ns) -> None:
    """The namespace floods the guest for a second while it posts no RX buffer: the device stops
    polling the tap, its loop thread stays idle, the host's memory does not grow, the kernel
    drops what it cannot queue; buffers posted afterwards receive what the kernel held."""
    g = Guest(ns, "n")
    try:
        g.start()
        time.sleep(0.1)
        cpu0, rss0 = g.lt.cpu_s(), _rss_kib()
        flood = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", FLOOD.format(secs=1.0)],
            capture_output=True,
            text=True,
            check=True,
        )
        sent = int(flood.stdout)
        cpu = g.lt.cpu_s() - cpu0
        assert sent > 1000, flood
        assert cpu < 0.1, f"the device loop used {cpu:.3f} s of CPU while the guest had no buffers"
        assert _rss_kib() - rss0 < 4096
        assert g.call(lambda: set(g.dev._polling)) == set()
        assert tap_stats(ns, g.tapname)["tx_dropped"] > 0  # the kernel dropped, we never read
        g.post_rx(64, SMALL_RX)
        frame = g.receive(lambda f: f.ip_proto == PROTO_UDP)
        assert frame.data.endswith(b"x" * 1200)
    finally:
        g.close()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_rx_frame_longer_than_its_chain_is_dropped_and_nothing_beyond_is_written(ns) -> None:
    """A 100-byte chain for a 1042-byte frame: the chain comes back empty (used length 0), the
    guest bytes right after it are untouched, and the next frame lands whole in the next chain."""
    g = Guest(ns, "x", loop=False)
    src = socket_in(ns, socket.SOCK_DGRAM)
    try:
        g.start()
        g.rxq.add([], [100])
        small, after = g.rxq.inflight[max(g.rxq.inflight)][1][0]
        canary = g.drv.alloc.alloc(4096)
        g.mem.fill(canary, 4096, 0xC5)
        src.sendto(b"y" * 1000, ("169.254.78.2", 7003))
        time.sleep(0.1)
        with HostCost() as cost:
            g.rxq.kick()
        (done,) = g.rxq.collect()
        assert done.length == 0 and g.dev.rx_dropped == 1
        assert g.mem.read(canary, 4096) == b"\xc5" * 4096
        assert small + after <= canary and cost.peak_mib < 1
        src.sendto(b"z" * 10, ("169.254.78.2", 7003))
        time.sleep(0.1)
        g.post_rx(1, SMALL_RX)
        (ok,) = g.rxq.collect()
        assert Frame.parse(ok.data[: ok.length]).data.endswith(b"z" * 10)
        assert ok.data[10:12] == b"\x01\x00"  # num_buffers = 1
    finally:
        src.close()
        g.close()
