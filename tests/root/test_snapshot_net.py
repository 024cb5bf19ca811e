"""A virtio-net device's snapshot restored onto another tap with another MAC (a clone's NIC).

Real taps in a network namespace this test creates, link-local addresses only. The Python
driver (tests/support/virtio_driver.py) plays the guest: it negotiates, posts receive buffers
and receives a UDP datagram; the device is frozen and its state taken as a snapshot does; a
new device on a second tap gets that state: the driver goes on without negotiating again, its
buffers posted before the snapshot receive the next datagram, and config space shows the new
MAC (which a guest's driver reads when it probes the NIC again: docs/snapshot.md).
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from virtio_driver import Allocator, Driver

from engine.eventloop import EventLoop
from engine.machine.memory import GuestMemory
from engine.snapshot.codec import from_json, to_json
from engine.virtio import net as N
from engine.virtio.mmio import STATUS_DRIVER_OK, MmioTransport
from engine.virtio.mmio_state import restore_transport, transport_state
from engine.virtio.tap import Tap

pytestmark = pytest.mark.root
MiB = 1 << 20
MAC1, MAC2 = "52:54:00:5a:00:01", "52:54:00:5a:00:02"


class LoopThread:
    def __init__(self) -> None:
        self.loop = EventLoop("snap-net")
        self.th = threading.Thread(target=self.loop.run, daemon=True)
        self.th.start()

    def call(self, fn):
        done, out = threading.Event(), []

        def run() -> None:
            try:
                out.append(fn())
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)
        return out[0] if out else None

    def stop(self) -> None:
        self.loop.stop()
        self.th.join(2)


@pytest.fixture
def ns():
    from pyroute2 import netns

    name = f"svsn{os.getpid()}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def tap_in(ns: str, name: str, host: str, guest: str, mac: str) -> Tap:
    """A tap inside ``ns`` at ``host``/24, with ``guest`` resolved to ``mac`` (no ARP needed)."""
    from pyroute2 import NetNS, netns

    netns.pushns(ns)
    try:
        tap = Tap.open(name, 1)
    finally:
        netns.popns()
    with NetNS(ns) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.addr("add", index=idx, address=host, prefixlen=24)
        ipr.link("set", index=idx, state="up")
        ipr.neigh("add", dst=guest, lladdr=mac, ifindex=idx, state=0x80)
    return tap


def send_udp(ns: str, dst: str, data: bytes) -> None:
    from pyroute2 import netns

    netns.pushns(ns)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        netns.popns()
    with s:
        s.sendto(data, (dst, 9999))


def received(lt: LoopThread, rxq, text: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """(the used ring's index, the frame) once a frame ending in ``text`` arrived."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for c in lt.call(rxq.collect):
            if c.data[12 : c.length].endswith(text):
                return rxq.used_idx(), c.data[12 : c.length]
        time.sleep(0.01)
    raise AssertionError(f"no frame ending in {text!r}")


def close_in(ns: str, t: MmioTransport) -> None:
    from pyroute2 import netns

    netns.pushns(ns)
    try:
        t.close()
    finally:
        netns.popns()


def test_a_nic_restored_onto_another_tap_with_another_mac(ns: str) -> None:
    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 16 * MiB)])
    tap1 = tap_in(ns, f"svsa{os.getpid()}"[:15], "169.254.78.1", "169.254.78.2", MAC1)
    dev = N.Net("net0", tap1, mac=MAC1, loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 16 * MiB))
    t2 = None
    try:
        lt.call(drv.start)
        assert drv.config_bytes(0, 6) == bytes.fromhex(MAC1.replace(":", ""))
        rxq = drv.queues[0]
        lt.call(lambda: ([rxq.add([], [2048]) for _ in range(8)], rxq.kick()))
        send_udp(ns, "169.254.78.2", b"before the snapshot")
        before, _ = received(lt, rxq, b"before the snapshot")  # (IPv6 may come first)

        def take() -> tuple[object, object]:
            dev.freeze()
            return transport_state(t), to_json(dev.snapshot_state())

        ts, ds = lt.call(take)
        close_in(ns, t)  # the template's NIC and tap are gone

        tap2 = tap_in(ns, f"svsb{os.getpid()}"[:15], "169.254.79.1", "169.254.79.2", MAC2)
        dev2 = N.Net("net0", tap2, mac=MAC2, loop=lt.loop)
        t2 = MmioTransport(dev2, mem)
        t2.set_interrupt(drv._irq)
        drv.transport = t2

        def give() -> None:
            restore_transport(t2, ts, from_json(N.NetState, ds))
            dev2.thaw()

        lt.call(give)
        assert drv.status & STATUS_DRIVER_OK  # no new negotiation
        assert drv.config_bytes(0, 6) == bytes.fromhex(MAC2.replace(":", ""))
        send_udp(ns, "169.254.79.2", b"after the restore")
        after, frame = received(lt, rxq, b"after the restore")
        assert after > before, "the ring goes on where the snapshot left it"
        assert frame[:6] == bytes.fromhex(MAC2.replace(":", ""))  # the host sends to the new MAC
    finally:
        lt.stop()
        if t2 is not None:
            close_in(ns, t2)
        mem.close()
