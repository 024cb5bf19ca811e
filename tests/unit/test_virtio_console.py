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
