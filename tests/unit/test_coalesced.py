"""KVM's coalesced PIO ring as KVM fills it (a page of our own), and when the UART allows it."""

from __future__ import annotations

import struct

from engine.machine import serial as s
from engine.machine.coalesced import CoalescedRing

PAGE = 4096
MAX = (PAGE - 8) // 24


def kvm_writes(page: bytearray, port: int, values: bytes) -> None:
    """What KVM's coalesced_mmio_write does for each byte: fill the slot at ``last``, bump it."""
    for v in values:
        last = struct.unpack_from("<I", page, 4)[0]
        struct.pack_into("<QII8s", page, 8 + last * 24, port, 1, 1, bytes([v]) + bytes(7))
        struct.pack_into("<I", page, 4, (last + 1) % MAX)


def test_drain_applies_writes_in_order_and_frees_the_slots_across_the_wrap() -> None:
    page = bytearray(PAGE)
    got: list[tuple[int, int, int]] = []
    ring = CoalescedRing(
        memoryview(page), lambda port, size, value: got.append((port, size, value))
    )
    assert not ring.pending() and ring.drain() == 0
    text = bytes(range(200)) * 3
    for i in range(0, len(text), 100):  # more than a ring's worth in all: it wraps
        kvm_writes(page, 0x3F8, text[i : i + 100])
        assert ring.pending()
        assert ring.drain() == 100
        assert not ring.pending()
    assert got == [(0x3F8, 1, b) for b in text]
    assert ring.applied == len(text)
    ring.close()


def test_a_ring_kvm_did_not_write_is_left_alone() -> None:
    page = bytearray(PAGE)
    struct.pack_into("<II", page, 0, 0, MAX + 5)  # "last" past the end
    got: list[int] = []
    ring = CoalescedRing(memoryview(page), lambda *a: got.append(1))
    assert ring.drain() == 0 and not got


def test_the_uart_allows_queued_thr_writes_only_while_they_cannot_interrupt() -> None:
    modes: list[bool] = []

    class Tx:
        def put_byte(self, value: int) -> bool:
            return True

        def room(self) -> int:
            return 4096

    uart = s.Serial(Tx(), lambda: None)
    uart.on_coalesce = modes.append
    assert uart.coalescable
    uart.write(s.IER, 1, s.IER_RDA)  # receive interrupts only: THR writes still silent
    uart.write(s.IER, 1, s.IER_RDA | s.IER_THRE)  # tty output starts: every write must exit
    uart.write(s.IER, 1, s.IER_RDA)  # and stops
    uart.write(s.MCR, 1, s.MCR_LOOP)  # loopback: a write is received data
    uart.write(s.MCR, 1, 0x08)
    assert modes == [False, True, False, True]


def test_a_lazy_read_lets_a_short_run_wait_and_applies_a_batch_as_one_run() -> None:
    from engine.machine.coalesced import BATCH

    page = bytearray(PAGE)
    runs: list[tuple[int, bytes]] = []
    singles: list[tuple[int, int, int]] = []
    ring = CoalescedRing(
        memoryview(page), lambda *a: singles.append(a), lambda p, d: runs.append((p, d))
    )
    ring.lazy_reads = frozenset({0x3FD})
    kvm_writes(page, 0x3F8, b"a" * (BATCH - 1))
    ring.before_exit(0x3FD, is_read=True)  # LSR: THRE counts the queued bytes, no need to apply
    assert ring.count() == BATCH - 1 and not runs
    kvm_writes(page, 0x3F8, b"b")
    ring.before_exit(0x3FD, is_read=True)  # a batch's worth: applied, as one run
    assert runs == [(0x3F8, b"a" * (BATCH - 1) + b"b")] and ring.count() == 0
    kvm_writes(page, 0x3F8, b"xy")
    kvm_writes(page, 0x80, b"z")  # another port breaks the run; order kept
    ring.before_exit(0x3F9, is_read=False)  # any other exit applies everything first
    assert runs[1:] == [(0x3F8, b"xy"), (0x80, b"z")] and not singles


def test_thre_counts_the_writes_kvm_still_holds() -> None:
    class Tx:
        def __init__(self) -> None:
            self.out = bytearray()

        def put_byte(self, value: int) -> bool:
            self.out.append(value)
            return True

        def room(self) -> int:
            return 100 - len(self.out)

        def write(self, data: bytes) -> int:
            n = min(len(data), self.room())
            self.out += data[:n]
            return n

    tx = Tx()
    uart = s.Serial(tx, lambda: None)
    held = [0]
    uart.tx_queued = lambda: held[0]
    assert uart.read(s.LSR) & s.LSR_THRE
    held[0] = 40  # room 100 - 40 queued < a FIFO: the guest must wait
    assert not uart.read(s.LSR) & s.LSR_THRE
    held[0] = 0
    uart.write_thr(b"x" * 120)  # the run applied: what fits is sent, the rest counted lost
    assert bytes(tx.out) == b"x" * 100 and uart.tx_bytes == 100 and uart.tx_lost == 20
