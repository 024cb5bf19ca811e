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
import time

import pytest
from nettest import LoopThread, address_tap, close_in, netns, open_in, socket_in
from virtio_driver import Allocator, Driver

from engine.machine.memory import GuestMemory
from engine.snapshot.codec import from_json, to_json
from engine.virtio import net as N
from engine.virtio.mmio import MmioTransport
from engine.virtio.mmio_regs import STATUS_DRIVER_OK
from engine.virtio.mmio_state import restore_transport, transport_state
from engine.virtio.tap import Tap

pytestmark = pytest.mark.root
MiB = 1 << 20
MAC1, MAC2 = "52:54:00:5a:00:01", "52:54:00:5a:00:02"


@pytest.fixture
def ns():
    with netns(f"svsn{os.getpid()}") as name:
        yield name


def tap_in(space: str, name: str, host: str, guest: str, mac: str) -> Tap:
    """A tap inside ``space`` at ``host``/24, with ``guest`` resolved to ``mac`` (no ARP)."""
    tap = open_in(space, name)
    address_tap(space, name, host, guest, bytes.fromhex(mac.replace(":", "")))
    return tap


def send_udp(space: str, dst: str, data: bytes) -> None:
    with socket_in(space, socket.SOCK_DGRAM) as s:
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
