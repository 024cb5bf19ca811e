"""A tiny guest floods COM1 as fast as THRE allows; every byte reaches the chardev in order, in
chunks, across pause/resume and power-off, and no reader (gone, stuck) stalls it or grows memory
(docs/console.md)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from tiny_guest import flood_pattern, make_plan, uart_flood, write_guest

from engine.machine.chardev_out import LIMIT, STALL
from engine.machine.serial import LSR, LSR_TEMT, LSR_THRE
from engine.vm import Vm

pytestmark = pytest.mark.kvm


def run_until(vm: Vm, cond, timeout: float, each=None) -> bool:
    """Turn the VM's main loop (this thread) until ``cond()``; ``each()`` after every turn."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        vm.wait(0.01)
        if each is not None:
            each()
    return cond()


def test_a_flood_reaches_a_file_in_order_in_chunks_across_pause_and_poweroff(tmp_path) -> None:
    count = 100_003  # the last bytes are a partial line: written out at power-off
    out = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, uart_flood(count)), serial_file=out)
    vm = Vm(plan)
    vm.start()
    try:
        serial = vm.machine.devices.serial
        queue = vm.machine.devices.serial_chardev.output
        assert run_until(vm, lambda: serial.tx_bytes > 20_000, 60)
        vm.pause()
        taken = serial.tx_bytes
        assert run_until(vm, lambda: queue.sent == taken, 2), "queued bytes wait for resume"
        assert out.stat().st_size == taken
        vm.resume()
        assert run_until(vm, lambda: vm.exit_code is not None, 60), "THRE stuck: no power-off"
        assert vm.exit_code == 0
        io_exits = vm.machine.vcpus[0].ctx.counts["IO"]
        coalesced = vm.machine.devices.coalescing
    finally:
        vm.close()
    assert out.read_bytes() == flood_pattern(count)
    # KVM queued the THR writes (coalesced PIO): a byte costs its LSR read's exit, not two
    assert coalesced is not None and coalesced.ring.applied >= count - 10
    assert io_exits < count * 1.1
    assert serial.tx_bytes == count and serial.tx_lost == 0
    assert queue.dropped == queue.refused == 0
    assert queue.writes * 20 < count, f"{queue.writes} writes for {count} bytes: not chunked"


def test_a_reader_that_vanishes_or_stops_reading_never_stalls_the_guest(tmp_path) -> None:
    count = 250_000
    sock = str(tmp_path / "serial.sock")
    guest = write_guest(tmp_path, uart_flood(count))
    plan = make_plan(guest, serial_file=sock, serial_backend="socket")  # server, nowait
    vm = Vm(plan)
    vm.start(paused=True)
    worst = [0]
    try:
        serial = vm.machine.devices.serial
        chardev = vm.machine.devices.serial_chardev
        queue = chardev.output

        def sample() -> None:
            worst[0] = max(worst[0], queue.pending())

        first = socket.socket(socket.AF_UNIX)
        first.connect(sock)
        first.setblocking(False)
        assert run_until(vm, lambda: chardev.out_fd is not None, 5)
        vm.resume()
        got = bytearray()

        def read_first() -> None:
            sample()
            try:
                got.extend(first.recv(1 << 16))
            except BlockingIOError:
                pass

        assert run_until(vm, lambda: len(got) >= 30_000, 60, read_first)
        first.close()  # vanishes mid-stream
        mark = serial.tx_bytes
        assert run_until(vm, lambda: serial.tx_bytes > mark + 30_000, 60, sample)
        assert queue.dropped > 0  # what nobody could read was dropped, the guest went on
        stuck = socket.socket(socket.AF_UNIX)
        stuck.connect(sock)  # connects, never reads
        assert run_until(vm, lambda: chardev._conn is not None, 5, sample)
        # the smallest socket buffer: the queue, not the kernel, is what a stuck reader fills
        # (how much a socket buffer holds depends on the sizes of the writes)
        chardev._conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        dropped = queue.dropped
        started = time.monotonic()
        assert run_until(vm, lambda: vm.exit_code is not None, 120, sample), "the guest stalled"
        stuck_for = time.monotonic() - started
        stalled = queue.dropped > dropped  # given up on after STALL: dropped, not waited for
        stuck.close()
    finally:
        vm.close()
    assert vm.exit_code == 0
    assert bytes(got) == flood_pattern(len(got))  # in order, from the first byte
    assert worst[0] <= LIMIT
    assert serial.tx_bytes == count and serial.tx_lost == 0  # never wrote without THRE
    assert stalled and stuck_for >= STALL, "a stuck reader was not waited for, then dropped"


def test_a_slow_reader_holds_the_guest_back_and_gets_every_byte(tmp_path) -> None:
    """A reader slower than the guest, but reading: the socket and the queue fill, THRE goes
    clear and the guest waits for it (no byte written without it, none dropped or refused);
    when the reader catches up, every byte arrives, in order, and the guest powers off."""
    count = 120_000
    sock = str(tmp_path / "serial.sock")
    guest = write_guest(tmp_path, uart_flood(count))
    plan = make_plan(guest, serial_file=sock, serial_backend="socket")
    vm = Vm(plan)
    vm.start(paused=True)
    worst = [0]
    got = bytearray()
    try:
        serial = vm.machine.devices.serial
        chardev = vm.machine.devices.serial_chardev
        queue = chardev.output
        reader = socket.socket(socket.AF_UNIX)
        reader.connect(sock)
        reader.setblocking(False)
        assert run_until(vm, lambda: chardev.out_fd is not None, 5)
        # the smallest socket buffer, so the engine's own queue is what fills (the guest is
        # slow on this PVM host: about 10 KB/s)
        with socket.socket(fileno=os.dup(chardev.out_fd)) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        vm.resume()

        def read(size: int) -> None:
            worst[0] = max(worst[0], queue.pending())
            try:
                got.extend(reader.recv(size))
            except BlockingIOError:
                pass

        # slow: 16 bytes a turn (a turn is 10 ms of the loop), well under the guest's pace
        full = run_until(vm, lambda: queue.room() < 64, 60, lambda: read(16))
        assert full, "the queue never filled: no back-pressure tested"
        lsr = serial.read(LSR)  # what the guest reads now: not ready, not empty
        assert lsr & (LSR_THRE | LSR_TEMT) == 0, f"LSR {lsr:#x} says ready with no room"
        ran = run_until(vm, lambda: vm.exit_code is not None, 120, lambda: read(1 << 16))
        assert ran, "the guest stalled"
        # the last partial line goes out when the engine closes: read it meanwhile
        reader.setblocking(True)
        reader.settimeout(10)

        def read_rest() -> None:
            while len(got) < count and (chunk := reader.recv(1 << 16)):
                got.extend(chunk)

        rest = threading.Thread(target=read_rest)
        rest.start()
    finally:
        vm.close()
    rest.join(15)
    reader.close()
    assert vm.exit_code == 0
    assert worst[0] <= LIMIT
    assert serial.tx_bytes == count and serial.tx_lost == 0  # never wrote without THRE
    assert queue.dropped == queue.refused == 0
    assert bytes(got) == flood_pattern(count)
