"""The 8250 model byte by byte, and the chardev backends over real fds (pty, unix socket, file)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from engine.eventloop import EventLoop
from engine.machine import serial as s
from engine.machine.bus import Bus, BusError
from engine.machine.chardev import open_chardev
from engine.plan import ChardevPlan
from launcher.errors import HostError


class Tx:
    """A transmit queue on a plain object: what the UART put, and how much room is left."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.out = bytearray()
        self.limit = limit

    def put_byte(self, value: int) -> bool:
        if len(self.out) >= self.limit:
            return False
        self.out.append(value)
        return True

    def room(self) -> int:
        return self.limit - len(self.out)

    def drain(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


class Uart:
    def __init__(self, limit: int = 1 << 20) -> None:
        self.tx = Tx(limit)
        self.out = self.tx.out
        self.irqs = 0
        self.dev = s.Serial(self.tx, self._irq)

    def _irq(self) -> None:
        self.irqs += 1


def test_transmit_and_lsr() -> None:
    u = Uart()
    for b in b"hi":
        u.dev.write(s.DATA, 1, b)
    assert bytes(u.out) == b"hi"
    assert u.dev.read(s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT


def test_divisor_latch_does_not_transmit() -> None:
    u = Uart()
    u.dev.write(s.LCR, 1, 0x80)
    u.dev.write(s.DATA, 1, 0x01)
    u.dev.write(s.IER, 1, 0x00)
    assert u.dev.read(s.DATA) == 0x01 and not u.out
    u.dev.write(s.LCR, 1, 0x03)
    assert u.dev.read(s.LCR) == 0x03


def test_receive_raises_rda_once_and_clears() -> None:
    u = Uart()
    u.dev.write(s.IER, 1, s.IER_RDA)
    assert u.dev.enqueue(b"ab") == 2
    assert u.irqs == 1
    assert u.dev.read(s.IIR) & 0x0F == s.IIR_RDA
    assert u.dev.read(s.LSR) & s.LSR_DR
    assert u.dev.read(s.DATA) == ord("a")
    assert u.dev.read(s.DATA) == ord("b")
    assert u.dev.read(s.IIR) & 0x0F == s.IIR_NONE
    assert not u.dev.read(s.LSR) & s.LSR_DR


def test_enabling_thre_interrupt_fires_and_iir_read_acks() -> None:
    u = Uart()
    u.dev.write(s.IER, 1, s.IER_THRE)
    assert u.irqs == 1
    assert u.dev.read(s.IIR) == s.IIR_THRE | s.IIR_FIFO
    assert u.dev.read(s.IIR) == s.IIR_NONE | s.IIR_FIFO
    u.dev.write(s.DATA, 1, ord("x"))
    assert u.irqs == 2


def test_fifo_is_bounded() -> None:
    u = Uart()
    assert u.dev.enqueue(bytes(100)) == s.FIFO_SIZE
    assert u.dev.read(s.LSR) & s.LSR_OE
    assert u.dev.free_space() == 0


def _lsr_thre(u: Uart) -> bool:
    lsr = u.dev.read(s.LSR)
    assert lsr & s.LSR_THRE == 0 or lsr & s.LSR_TEMT, "THRE without TEMT"
    return bool(lsr & s.LSR_THRE)


def test_thre_is_clear_while_the_queue_lacks_room_for_a_fifo() -> None:
    """A slow reader: THRE/TEMT clear and no THRE interrupt until the queue has room again."""
    u = Uart(limit=s.FIFO_SIZE + 3)
    u.dev.write(s.IER, 1, s.IER_THRE)
    assert u.irqs == 1 and u.dev.read(s.IIR) & 0x0F == s.IIR_THRE  # acked
    for b in b"abc":
        assert _lsr_thre(u)
        u.dev.write(s.DATA, 1, b)
    assert u.dev.read(s.IIR) & 0x0F == s.IIR_THRE  # still a FIFO of room after "abc"
    irqs = u.irqs
    u.dev.write(s.DATA, 1, ord("d"))
    assert not _lsr_thre(u)  # room 63 < 64: the guest must wait
    assert u.dev.read(s.IIR) & 0x0F == s.IIR_NONE and u.irqs == irqs
    u.dev.tx_room()  # the loop says "room" but there is none yet: nothing happens
    assert u.irqs == irqs and not _lsr_thre(u)
    assert u.tx.drain() == b"abcd"
    u.dev.tx_room()
    assert _lsr_thre(u)
    assert u.irqs == irqs + 1 and u.dev.read(s.IIR) & 0x0F == s.IIR_THRE
    assert u.dev.tx_bytes == 4 and u.dev.tx_lost == 0


def test_a_byte_written_with_no_room_at_all_is_lost_and_counted() -> None:
    u = Uart(limit=2)
    for b in b"xyz":
        u.dev.write(s.DATA, 1, b)
    assert bytes(u.out) == b"xy"
    assert u.dev.tx_bytes == 2 and u.dev.tx_lost == 1


def test_enabling_the_thre_interrupt_while_held_waits_for_room() -> None:
    u = Uart(limit=s.FIFO_SIZE - 1)  # never a whole FIFO of room until drained
    assert not _lsr_thre(u)
    u.dev.write(s.IER, 1, s.IER_THRE)
    assert u.irqs == 0
    u.tx.limit = 4 * s.FIFO_SIZE
    u.dev.tx_room()
    assert u.irqs == 1 and u.dev.read(s.IIR) & 0x0F == s.IIR_THRE


def test_a_thre_held_for_room_is_raised_by_the_restored_uart() -> None:
    """A snapshot taken while THRE waits for room: the restored UART (an empty queue of its own)
    raises it, or a guest waiting for that interrupt would wait for ever (docs/snapshot.md)."""
    u = Uart(limit=s.FIFO_SIZE - 1)  # never room for a FIFO: THRE stays held
    u.dev.write(s.IER, 1, s.IER_THRE)
    assert u.dev.read(s.IIR) & 0x0F == s.IIR_NONE
    state = u.dev.snapshot_state()
    assert state.tx_held
    v = Uart()
    v.dev.restore_state(state)
    assert v.irqs == 0  # restoring raises nothing by itself
    v.dev.tx_room()  # what the restore does next
    assert v.irqs == 1 and v.dev.read(s.IIR) & 0x0F == s.IIR_THRE


def test_linux_style_interrupt_driven_output_never_stalls() -> None:
    """serial8250_tx_chars: on each THRE interrupt, ack (IIR) and write up to 16 bytes; a reader
    that drains now and then (the loop) keeps the interrupts coming and every byte arrives."""
    u = Uart(limit=256)
    text = bytes(range(256)) * 40
    sent = bytearray()
    pos = 0
    u.dev.write(s.IER, 1, s.IER_THRE)
    stalls = 0
    while pos < len(text):
        if u.dev.read(s.IIR) & 0x0F != s.IIR_THRE:
            sent += u.tx.drain()  # the host's loop flushes, then tells the UART
            u.dev.tx_room()
            stalls += 1
            assert stalls < 10_000
            continue
        for _ in range(16):
            if pos == len(text):
                break
            u.dev.write(s.DATA, 1, text[pos])
            pos += 1
    sent += u.tx.drain()
    assert bytes(sent) == text and u.dev.tx_lost == 0


def test_loopback_and_scratch() -> None:
    u = Uart()
    u.dev.write(s.MCR, 1, s.MCR_LOOP | 0x0B)
    u.dev.write(s.DATA, 1, 0x55)
    assert u.dev.read(s.DATA) == 0x55 and not u.out
    assert u.dev.read(s.MSR) & 0xF0 == 0xB0
    u.dev.write(s.SCR, 1, 0x5A)
    assert u.dev.read(s.SCR) == 0x5A


def test_bus_refuses_overlap_and_routes_offsets() -> None:
    bus = Bus("pio")
    u = Uart()
    bus.insert(u.dev, 0x3F8, 8, "com1")
    with pytest.raises(BusError, match=r"overlaps com1 \[0x3f8, 0x400\)"):
        bus.insert(u.dev, 0x3FF, 2, "other")
    bus.write(0x3FF, 1, 0x42)
    assert bus.read(0x3FF, 1) == 0x42
    assert bus.read(0x2F8, 1) == 0xFF and bus.unhandled == 1


# -- backends -------------------------------------------------------------------------------------


def _run_loop(loop: EventLoop) -> threading.Thread:
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return t


def _wait(cond, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_file_backend(tmp_path) -> None:
    c = open_chardev(ChardevPlan("c", "file", str(tmp_path / "out")))
    c.write(b"guest says hi\n")
    c.close()
    assert (tmp_path / "out").read_bytes() == b"guest says hi\n"


def test_pty_backend_both_ways() -> None:
    c = open_chardev(ChardevPlan("c", "pty"))
    got = bytearray()
    loop = EventLoop()
    c.attach(loop, lambda d: got.extend(d) or len(d), lambda: 64)
    t = _run_loop(loop)
    fd = os.open(c.path, os.O_RDWR | os.O_NOCTTY)
    try:
        c.write(b"out")
        assert os.read(fd, 16) == b"out"
        os.write(fd, b"in")
        assert _wait(lambda: bytes(got) == b"in")
    finally:
        os.close(fd)
        loop.stop()
        t.join(2)
        c.close()


def test_socket_server_one_client_and_reconnect(tmp_path) -> None:
    path = str(tmp_path / "console.sock")
    c = open_chardev(ChardevPlan("c", "socket", path, server=True, nowait=True))
    got = bytearray()
    loop = EventLoop()
    c.attach(loop, lambda d: got.extend(d) or len(d), lambda: 64)
    t = _run_loop(loop)
    try:
        assert c.write(b"lost") == 4  # nobody connected: taken, then dropped, never blocked
        assert _wait(lambda: c.dropped == 4)
        for round_ in range(2):
            cl = socket.socket(socket.AF_UNIX)
            cl.connect(path)
            assert _wait(lambda: c.out_fd is not None)
            c.write(b"hello\n")
            cl.settimeout(5)
            assert cl.recv(16) == b"hello\n"
            cl.sendall(b"k%d" % round_)
            assert _wait(lambda r=round_: bytes(got).endswith(b"k%d" % r))
            cl.close()
            assert _wait(lambda: c.out_fd is None)
    finally:
        loop.stop()
        t.join(2)
        c.close()
    assert not os.path.exists(path)


def test_input_backpressure_pauses_polling(tmp_path) -> None:
    path = str(tmp_path / "s")
    c = open_chardev(ChardevPlan("c", "socket", path, server=True, nowait=True))
    room = [4]
    got = bytearray()

    def sink(d: bytes) -> int:
        got.extend(d)
        room[0] -= len(d)
        return len(d)

    loop = EventLoop()
    c.attach(loop, sink, lambda: room[0])
    t = _run_loop(loop)
    cl = socket.socket(socket.AF_UNIX)
    cl.connect(path)
    try:
        cl.sendall(b"0123456789")
        assert _wait(lambda: len(got) == 4)
        time.sleep(0.1)
        assert bytes(got) == b"0123"  # full: stopped reading
        room[0] = 64
        loop.call_soon_threadsafe(c.resume_input)
        assert _wait(lambda: bytes(got) == b"0123456789")
    finally:
        cl.close()
        loop.stop()
        t.join(2)
        c.close()


def test_socket_client_without_server_is_a_host_error(tmp_path) -> None:
    with pytest.raises(HostError, match="cannot connect") as info:
        open_chardev(ChardevPlan("c", "socket", str(tmp_path / "none")))
    assert "server" in info.value.hint


def test_unknown_backend() -> None:
    with pytest.raises(HostError, match="backend 'tcp' is not supported"):
        open_chardev(ChardevPlan("c", "tcp"))


def test_socket_server_takes_a_client_that_connected_before_attach(tmp_path) -> None:
    """A front end's first bytes (queued before the loop ran) reach an early client."""
    path = str(tmp_path / "early.sock")
    c = open_chardev(ChardevPlan("c", "socket", path, server=True, nowait=True))
    cl = socket.socket(socket.AF_UNIX)
    cl.connect(path)
    loop = EventLoop()
    try:
        c.write(b"login: ")  # before attach: queued
        c.attach(loop, lambda d: len(d), lambda: 64)
        loop.run_once(timeout=0.5)  # the loop's first turn writes it out
        cl.settimeout(5)
        assert cl.recv(16) == b"login: "
        assert c.dropped == 0
    finally:
        cl.close()
        c.close()
        loop.close()


def test_the_unlocked_lsr_answers_only_when_reading_it_changes_nothing() -> None:
    u = Uart(limit=4 * s.FIFO_SIZE)
    assert u.dev.lsr_unlocked() == s.LSR_THRE | s.LSR_TEMT == u.dev.read(s.LSR)
    u.dev.enqueue(b"k")  # received data: DR is the locked read's business
    assert u.dev.lsr_unlocked() == -1 and u.dev.read(s.LSR) & s.LSR_DR
    u.dev.read(s.DATA)
    u.dev.enqueue(bytes(s.FIFO_SIZE + 1))  # an overrun: reading LSR clears OE
    assert u.dev.lsr_unlocked() == -1
    u.dev.write(s.FCR, 1, 0x02)
    assert u.dev.read(s.LSR) & s.LSR_OE
    assert u.dev.lsr_unlocked() == s.LSR_THRE | s.LSR_TEMT
    for _ in range(3 * s.FIFO_SIZE + 1):  # room below a FIFO: THRE clear, the locked path
        u.dev.write(s.DATA, 1, 0x41)
    assert u.dev.lsr_unlocked() == -1 and not u.dev.read(s.LSR) & s.LSR_THRE
