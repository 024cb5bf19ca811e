"""Shared parts of the virtio-net tests on real taps: a network namespace of the test's own, a
tap created inside it, an event loop on a thread, and just enough Ethernet/IPv4/UDP/TCP to play
the guest's side of a conversation with the namespace's kernel (link-local 169.254.0.0/16 only).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.eventloop import EventLoop
from engine.virtio.tap import Tap

ETH_IP, ETH_ARP = 0x0800, 0x0806
PROTO_TCP, PROTO_UDP = 6, 17
SYN, ACK, PSH = 0x02, 0x10, 0x08
VNET_HDR = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset, n
NEEDS_CSUM = 1
GSO_TCPV4 = 1


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s >> 16) + (s & 0xFFFF)
    return ~s & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 1) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0, src, dst
    )
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def udp(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = csum(pseudo(src, dst, PROTO_UDP, len(seg)) + seg) or 0xFFFF
    return ipv4(src, dst, PROTO_UDP, seg[:6] + struct.pack("!H", c) + seg[8:])


def tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    data: bytes = b"",
    *,
    options: bytes = b"",
    window: int = 65535,
    partial: bool = False,
) -> bytes:
    """An IPv4 TCP segment. ``partial``: the checksum field holds the pseudo-header sum only, as a
    guest that offloads the checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) writes it."""
    off = (20 + len(options)) // 4 << 12
    hdr = struct.pack("!HHIIHHHH", sport, dport, seq, ack, off | flags, window, 0, 0) + options
    seg = hdr + data
    ph = pseudo(src, dst, PROTO_TCP, len(seg))
    c = (~csum(ph) & 0xFFFF) if partial else csum(ph + seg)
    return ipv4(src, dst, PROTO_TCP, seg[:16] + struct.pack("!H", c) + seg[18:])


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
         csum_start: int = 0, csum_offset: int = 0) -> bytes:  # fmt: skip
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


@dataclass(frozen=True)
class Frame:
    """One received frame: its vnet header fields and the Ethernet frame."""

    flags: int
    gso_type: int
    gso_size: int
    data: bytes

    @classmethod
    def parse(cls, buf: bytes) -> Frame:
        flags, gso_type, _hl, gso_size, _cs, _co, _n = VNET_HDR.unpack_from(buf)
        return cls(flags, gso_type, gso_size, buf[12:])

    @property
    def ethertype(self) -> int:
        return struct.unpack_from("!H", self.data, 12)[0]

    @property
    def ip_proto(self) -> int | None:
        return self.data[23] if self.ethertype == ETH_IP else None

    @property
    def l4(self) -> bytes:
        """The IPv4 payload (TCP or UDP segment), by the IP header's own lengths."""
        ihl = (self.data[14] & 0xF) * 4
        total = struct.unpack_from("!H", self.data, 16)[0]
        return self.data[14 + ihl : 14 + total]

    def tcp_fields(self) -> tuple[int, int, int, int, int]:
        """(sport, dport, seq, ack, flags)."""
        sport, dport, seq, ack, offflags = struct.unpack_from("!HHIIH", self.l4)
        return sport, dport, seq, ack, offflags & 0x3F

    def tcp_payload(self) -> bytes:
        seg = self.l4
        return seg[(seg[12] >> 4) * 4 :]

    def l4_checksum_ok(self) -> bool:
        src, dst = self.data[26:30], self.data[30:34]
        seg = self.l4
        return csum(pseudo(src, dst, self.ip_proto or 0, len(seg)) + seg) == 0


class LoopThread:
    """An engine EventLoop on a thread of its own, as the engine runs its main loop."""

    def __init__(self) -> None:
        self.loop = EventLoop("net-test")
        self.native_id = 0
        started = threading.Event()

        def run() -> None:
            self.native_id = threading.get_native_id()
            started.set()
            self.loop.run()

        self.th = threading.Thread(target=run, daemon=True)
        self.th.start()
        started.wait(5)

    def call(self, fn: Callable[[], Any]) -> Any:
        done = threading.Event()
        out: list[Any] = []

        def run() -> None:
            try:
                out.append(fn())
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)
        return out[0] if out else None

    def cpu_s(self) -> float:
        """CPU time the loop's thread has used (user + system), from /proc."""
        with open(f"/proc/self/task/{self.native_id}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.loop.stop()
        self.th.join(2)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace of the test's own, removed afterwards."""
    from pyroute2 import netns as pyr_netns

    pyr_netns.create(name)
    try:
        yield name
    finally:
        pyr_netns.remove(name)


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block in namespace ``ns`` (taps and sockets made there belong to it)."""
    from pyroute2 import netns as pyr_netns

    pyr_netns.pushns(ns)
    try:
        yield
    finally:
        pyr_netns.popns()


def open_in(ns: str, name: str, queues: int = 1) -> Tap:
    """Create a tap inside the namespace (pyroute2 creates it there)."""
    with inside(ns):
        return Tap.open(name, queues)


def close_in(ns: str, closable: Any) -> None:
    """Close a transport (and its tap) from inside the namespace the tap lives in."""
    with inside(ns):
        closable.close()


def address_tap(ns: str, tapname: str, addr: str, guest_ip: str, guest_mac: bytes) -> bytes:
    """Give the tap ``addr``/24, bring it up, and a permanent neighbour entry for the guest (so
    the namespace never needs an ARP answer); returns the tap's MAC. IPv6 is off on the tap, so
    the kernel sends the guest nothing the test did not ask for (router solicitations, MLD)."""
    from pyroute2 import NetNS

    with inside(ns), open(f"/proc/sys/net/ipv6/conf/{tapname}/disable_ipv6", "w") as f:
        f.write("1")
    with NetNS(ns) as ipr:
        idx = ipr.link_lookup(ifname=tapname)[0]
        ipr.addr("add", index=idx, address=addr, prefixlen=24)
        ipr.link("set", index=idx, state="up")
        ipr.neigh("add", dst=guest_ip, lladdr=guest_mac.hex(":"), ifindex=idx, state=0x80)
        link = ipr.get_links(idx)[0]
        return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


def drain(tap: Tap) -> None:
    """Discard the frames the kernel queued on the tap before the test began (IPv6 chatter from
    the moment the tap came up)."""
    for fd in tap.fds:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.read(fd, 65536 + 12)


def tap_stats(ns: str, tapname: str) -> dict[str, int]:
    """The tap's link counters in the namespace (tx: towards the guest)."""
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        idx = ipr.link_lookup(ifname=tapname)[0]
        stats = ipr.get_links(idx)[0].get_attr("IFLA_STATS64")
        return {k: int(v) for k, v in stats.items()}


def socket_in(ns: str, kind: int) -> socket.socket:
    with inside(ns):
        return socket.socket(socket.AF_INET, kind)
