"""KVM's coalesced PIO ring: port writes KVM queues in a shared page instead of exiting to us.

Why (docs/console.md): a Linux console prints a byte with an LSR read and a THR write, each a
VM exit into the engine's Python exit path, the largest cost of a verbose boot. A THR write
while the THRE interrupt is off has no effect the guest can see before its next UART access, so
KVM may queue it (``KVM_REGISTER_COALESCED_MMIO`` with ``pio = 1``) and the engine applies it
later, in order. Later is: before the engine handles any other PIO exit (an LSR read lets up
to ``BATCH`` writes wait: THRE counts them as sent), when a vCPU pauses, when the VM closes,
and on the main loop's poll for guests that write and then halt without reading
the UART (50 ms after it found writes, backing off to a quarter second while the ring stays
empty: every poll wakes the main thread, and a Linux guest's own exits apply the ring anyway).

The ring (``struct kvm_coalesced_mmio_ring``, one page of the vCPU mapping at the page offset
``KVM_CAP_COALESCED_MMIO`` answers): ``u32 first, last`` then entries of ``u64 phys_addr;
u32 len; u32 pio; u8 data[8]``; KVM fills ``last``, we advance ``first``. When it is full KVM
exits as usual, so the ring never loses a write.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.logsetup import get_logger
from engine.machine.kvm import KvmError
from engine.machine.serial import LSR

if TYPE_CHECKING:
    from engine.eventloop import EventLoop as Loop
    from engine.machine.kvm import VmFd
    from engine.machine.serial import Serial

log = get_logger(__name__)

_HEAD = struct.Struct("<II")  # first, last
_ENTRY = struct.Struct("<QII8s")  # phys_addr, len, pio, data
_ENTRY_HEAD = struct.Struct("<QII")  # the entry without its data
_DATA = _ENTRY_HEAD.size

Write = Callable[[int, int, int], None]  # (port, size, value): the PIO bus's write
WriteBytes = Callable[[int, bytes], None]  # (port, bytes): a run of one-byte writes to a port

#: queued writes a lazy read lets wait (a batch applied at once costs less per byte)
BATCH = 64


class CoalescedRing:
    """The VM's ring, drained by whichever thread gets there first (vCPUs, the main loop).

    ``lazy_reads``: ports whose reads do not depend on the queued writes beyond what
    ``count()`` lets the device account for (the UART's LSR: THRE is computed with the queued
    bytes counted as sent); a read there applies the ring only once ``BATCH`` writes wait.
    """

    def __init__(
        self, page: memoryview, write: Write, write_bytes: WriteBytes | None = None
    ) -> None:
        self._page = page
        #: first, last: the vCPU loop compares them on every PIO exit (no method call)
        self.heads = page[: _HEAD.size].cast("I")
        self._write = write
        self._write_bytes = write_bytes
        self._max = (len(page) - _HEAD.size) // _ENTRY.size
        self._lock = threading.Lock()
        self.lazy_reads: frozenset[int] = frozenset()
        self.applied = 0

    def pending(self) -> bool:
        heads = self.heads
        return heads[0] != heads[1]

    def count(self) -> int:
        """Writes waiting (as KVM left them; a bogus head counts as none)."""
        first, last = self.heads[0], self.heads[1]
        return (last - first) % self._max if first < self._max and last < self._max else 0

    def before_exit(self, port: int, is_read: bool) -> None:
        """What a PIO exit to ``port`` needs first: the queued writes, unless it is a lazy read
        and fewer than ``BATCH`` wait."""
        if is_read and port in self.lazy_reads and self.count() < BATCH:
            return
        self.drain()

    def drain(self) -> int:
        """Apply the queued writes in order; returns how many there were."""
        page, heads, size = self._page, self.heads, _ENTRY.size
        with self._lock:
            first, last = heads[0], heads[1]
            if first >= self._max or last >= self._max:
                return 0  # not a ring KVM wrote: leave it (KVM exits once it cannot queue)
            n = 0
            run_port, run = -1, bytearray()  # consecutive one-byte writes to one port
            while first != last:
                at = _HEAD.size + first * size
                addr, length, pio = _ENTRY_HEAD.unpack_from(page, at)
                if pio and length == 1:
                    if addr != run_port:
                        self._apply_run(run_port, run)
                        run_port, run = addr, bytearray()
                    run.append(page[at + _DATA])
                elif pio and length in (2, 4):
                    self._apply_run(run_port, run)
                    run_port, run = -1, bytearray()
                    value = int.from_bytes(page[at + _DATA : at + _DATA + length], "little")
                    self._write(addr, length, value)
                first = (first + 1) % self._max
                n += 1
            self._apply_run(run_port, run)
            heads[0] = first  # the slots are KVM's again (read before: x86 keeps store order)
            self.applied += n
        return n

    def _apply_run(self, port: int, run: bytearray) -> None:
        if not run:
            return
        if self._write_bytes is not None:
            self._write_bytes(port, bytes(run))
            return
        for value in run:
            self._write(port, 1, value)

    def close(self) -> None:
        with self._lock:
            self.heads.release()
            self._page.release()


POLL_MIN = 0.05  # after the poll found writes: look again this soon
POLL_MAX = 0.25  # an idle ring is looked at this often at most


class UartCoalescing:
    """COM1's THR port through the ring while the UART says its writes may be queued
    (``Serial.coalescable``: no THRE interrupt, no loopback), plus the main loop's poll."""

    def __init__(
        self, vm: VmFd, serial: Serial, port: int, ring: CoalescedRing, loop: Loop
    ) -> None:
        self._vm, self._port, self.ring, self._loop = vm, port, ring, loop
        ring.lazy_reads = frozenset({port + LSR})  # THRE counts the queued bytes as sent
        serial.tx_queued = ring.count
        self._on = False
        self._closed = False
        self._delay = POLL_MIN
        self._timer: Any = None
        serial.on_coalesce = self._set  # called under the UART's lock, on a vCPU thread
        if serial.coalescable:
            self._set(True)
        loop.call_soon_threadsafe(self._poll)

    def _set(self, on: bool) -> None:
        if on == self._on or self._closed:
            return
        try:
            self._vm.coalesce_pio(self._port, 1, on=on)
        except KvmError as e:  # the writes keep exiting (on) or ... see the warning
            log.warning(
                "COM1: %s the coalesced THR port failed: %s", "adding" if on else "removing", e
            )
            return
        self._on = on

    def _poll(self) -> None:
        if self._closed:
            return
        n = self.ring.drain() if self.ring.pending() else 0
        self._delay = POLL_MIN if n else min(self._delay * 2, POLL_MAX)
        self._timer = self._loop.call_later(self._delay, self._poll)

    def close(self) -> None:
        """After the vCPUs stopped: apply what is left, then let go of the vCPU page."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.ring.drain()
        self.ring.close()
