"""virtio-console: guest output reaches the chardev, host input reaches the guest, with back-pressure."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from virtio_driver import Allocator, Driver

from engine.eventloop import EventLoop
from engine.machine.chardev import open_chardev
from engine.machine.memory import GuestMemory
from engine.plan import ChardevPlan
from engine.virtio import console as C
from engine.virtio.chardev_io import FdBackend
from engine.virtio.mmio import MmioTransport

MiB = 1 << 20


class LoopThread:
    def __init__(self) -> None:
        self.loop = EventLoop("console-test")
        self.th = threading.Thread(target=self.loop.run, daemon=True)
        self.th.start()

    def call(self, fn):
        done = threading.Event()
        out = []

        def run():
            out.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(30)
        return out[0]

    def stop(self) -> None:
        self.loop.stop()
        self.th.join(2)


def wait_for(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_console_over_a_real_socket_chardev(tmp_path: Path) -> None:
    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 8 * MiB)])
    path = str(tmp_path / "con.sock")
    chardev = open_chardev(ChardevPlan("con0", "socket", path=path, server=True, nowait=True))
    dev = C.Console("console0", chardev, loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        lt.call(drv.start)
        assert dev.device_id == 3 and drv.config(4, 4) == 1  # max_nr_ports
        rx, tx = drv.queues[C.RECEIVEQ], drv.queues[C.TRANSMITQ]

        # Guest → host.
        def send():
            tx.add([b"login: "], [])
            tx.kick()

        lt.call(send)
        client.settimeout(30)
        assert client.recv(100) == b"login: "
        # Host → guest: input waits for buffers, then arrives in order.
        lt.call(lambda: [rx.add([], [4]) for _ in range(2)] and rx.kick())
        client.sendall(b"root\nls -l\n")
        got = wait_for(lambda: lt.call(rx.collect))
        data = b"".join(c.data[: c.length] for c in got)
        assert data == b"root\nls "
        lt.call(lambda: (rx.add([], [64]), rx.kick()))
        more = wait_for(lambda: lt.call(rx.collect))
        assert b"".join(c.data[: c.length] for c in more) == b"-l\n"
        assert dev.stats.bytes_in == 7 and dev.stats.bytes_out == 11
    finally:
        client.close()
        lt.call(t.close)
        chardev.close()
        lt.stop()
        mem.close()


def test_input_back_pressure_and_emergency_write() -> None:
    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 8 * MiB)])
    a, b = socket.socketpair()
    dev = C.Console("console0", FdBackend(a), loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    try:
        lt.call(drv.start)
        b.setblocking(False)
        sent = 0
        try:
            while sent < 4 * C.RX_BUFFER:
                sent += b.send(b"x" * 4096)
        except BlockingIOError:
            pass
        # The device buffers at most RX_BUFFER bytes; the rest stays in the socket.
        wait_for(lambda: len(dev._rx) == C.RX_BUFFER)
        time.sleep(0.1)
        assert len(dev._rx) == C.RX_BUFFER
        # Emergency write goes straight out.
        t.write(0x100 + 8, 4, ord("!"))
        b.setblocking(True)
        b.settimeout(30)
        assert b.recv(1) == b"!"
    finally:
        lt.call(t.close)
        a.close()
        b.close()
        lt.stop()
        mem.close()


class QueueBackend:
    """A backend with a bounded output queue, as the engine's chardevs have (plain object)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()
        self.writes = 0
        self.on_room = None

    def attach(self, loop, sink, free) -> None:
        pass

    def resume_input(self) -> None:
        pass

    def notify_room(self, callback) -> None:
        self.on_room = callback

    def room(self) -> int:
        return self.limit - len(self.out)

    def write(self, data: bytes) -> int:
        n = min(len(data), self.room())
        self.out += data[:n]
        self.writes += 1
        return n

    def drain(self) -> bytes:
        """What the chardev's loop does: write the queue out, then say there is room."""
        data, self.out = bytes(self.out), bytearray()
        self.on_room()
        return data


def test_transmit_batches_a_kick_into_one_write_and_holds_what_does_not_fit() -> None:
    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 8 * MiB)])
    backend = QueueBackend(limit=100)
    dev = C.Console("console0", backend, loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    try:
        lt.call(drv.start)
        tx = drv.queues[C.TRANSMITQ]
        lines = [b"line %02d of the hvc output\n" % i for i in range(12)]  # 27 bytes each

        def send():
            for line in lines:
                tx.add([line], [])
            tx.kick()

        lt.call(send)
        # three lines fit in one write; the fourth waits, unanswered, for room
        assert lt.call(lambda: (backend.writes, bytes(backend.out))) == (1, b"".join(lines[:3]))
        assert len(lt.call(tx.collect)) == 3
        got = bytearray()
        for _ in range(len(lines)):
            if len(got) == len(b"".join(lines)):
                break
            got += lt.call(backend.drain)  # the room callback takes the held request and more
        assert bytes(got) == b"".join(lines)  # every byte, in order
        assert backend.writes == 4  # 3 + 3 + 3 + 3 lines
        assert len(lt.call(tx.collect)) == 9  # answered once the chardev took them
        assert dev.tx_dropped == 0
    finally:
        lt.call(t.close)
        lt.stop()
        mem.close()


def test_requests_larger_than_a_draining_queue_announces_still_go_out(tmp_path: Path) -> None:
    """A request is cut to TX_MAX (half the chardev queue), so a held one always fits once the
    queue calls back: a reader that keeps up gets every byte the device kept, in order."""
    assert C.TX_MAX * 2 <= C.OUTPUT_LIMIT
    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 16 * MiB)])
    path = str(tmp_path / "con.sock")
    chardev = open_chardev(ChardevPlan("con0", "socket", path=path, server=True, nowait=True))
    dev = C.Console("console0", chardev, loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 16 * MiB))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    size, count = C.TX_MAX + 8 * 1024, 24  # longer than Linux writes: the tail is cut
    requests = [bytes([0x41 + i]) * size for i in range(count)]
    try:
        client.connect(path)
        lt.call(drv.start)
        tx = drv.queues[C.TRANSMITQ]

        def send():
            for r in requests:
                tx.add([r], [])
            tx.kick()

        lt.call(send)  # far more than the socket buffer and the queue hold: requests wait
        time.sleep(0.3)
        answered = len(lt.call(tx.collect))
        assert answered < count  # held back, unanswered, not dropped
        want = b"".join(r[: C.TX_MAX] for r in requests)
        got = bytearray()
        client.settimeout(10)
        while len(got) < len(want):
            got += client.recv(1 << 16)
        assert bytes(got) == want
        assert dev.tx_dropped == count * (size - C.TX_MAX)
        assert chardev.dropped == 0
        while answered < count:  # every request answered once the chardev took it
            answered += len(wait_for(lambda: lt.call(tx.collect)))
        assert answered == count
    finally:
        client.close()
        lt.call(t.close)
        chardev.close()
        lt.stop()
        mem.close()


def test_a_request_held_for_room_goes_back_to_the_ring_at_a_snapshot() -> None:
    """A snapshot keeps rings, not requests: the held one is given back at the freeze, and the
    device restored from the snapshot (another backend) sends it first, then the rest."""
    from engine.virtio.mmio_state import restore_transport, transport_state

    lt = LoopThread()
    mem = GuestMemory.anonymous([(0, 8 * MiB)])
    dev = C.Console("console0", QueueBackend(limit=100), loop=lt.loop)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    t2 = None
    try:
        lt.call(drv.start)
        tx = drv.queues[C.TRANSMITQ]
        lines = [b"line %02d of the hvc output\n" % i for i in range(6)]  # 27 bytes each

        def send():
            for line in lines:
                tx.add([line], [])
            tx.kick()

        lt.call(send)
        assert len(lt.call(tx.collect)) == 3  # the fourth is held, unanswered

        def take():
            dev.freeze()
            return transport_state(t), dev.snapshot_state()

        ts, ds = lt.call(take)
        assert dev.stats.requests == 3  # the held one is counted when it is popped again
        backend2 = QueueBackend(limit=1000)
        t2 = MmioTransport(C.Console("console0", backend2, loop=lt.loop), mem)
        t2.set_interrupt(drv._irq)
        drv.transport = t2

        def give():
            restore_transport(t2, ts, ds)
            t2.device.thaw()

        lt.call(give)
        assert lt.call(lambda: bytes(backend2.out)) == b"".join(lines[3:])
        assert len(lt.call(tx.collect)) == 3
    finally:
        if t2 is not None:
            lt.call(t2.close)
        lt.stop()
        mem.close()
