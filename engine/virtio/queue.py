"""The split virtqueue (virtio 1.2 §2.7), written on the assumption that the guest is hostile.

The queue is pure over ``GuestMemory``: it never touches KVM, files or threads. Every value the
guest controls is read once (no TOCTOU) and checked before use, following Firecracker's
``queue.rs`` and rust-vmm's ``virtio-queue/src/chain.rs``:

- ring placement (``Queue.validate``): size a power of two ≤ ``max_size``; descriptor table
  16-aligned, avail ring 2-aligned, used ring 4-aligned; each ring wholly inside guest RAM;
- avail index sanity: more than ``size`` pending entries means a broken driver (§2.7.13.3);
- head index < size, ``next`` < size (or < the indirect table length);
- a TTL of ``size`` links (or the indirect table length) stops loops;
- indirect tables (§2.7.5.3): feature negotiated, not nested, not combined with NEXT,
  ``len % 16 == 0``, at most 65535 entries, wholly in RAM, read once as a snapshot;
- every buffer ``[addr, addr+len)`` inside guest RAM (may span adjacent regions), no 2^64 wrap;
- device-readable descriptors before device-writable ones (§2.7.4.2);
- total chain length < 2^32 and at most ``MAX_CHAIN_IOVECS`` buffers (IOV_MAX, for preadv);
- used length ≤ the chain's writable length.

Two error classes: a malformed *chain* (``ChainError``) fails only that request, which the queue
returns to the driver with used length 0; a broken *queue* (``QueueError``: bad avail index or
head) cannot be recovered and the transport puts the device into DEVICE_NEEDS_RESET. Neither
reaches host memory outside guest RAM, because all access goes through ``GuestMemory``.

Memory ordering: x86 keeps stores in order and loads in order, and CPython performs each
``pack_into``/``unpack_from`` as one copy, so "write the used element, then bump used.idx" and
"read avail.idx, then the ring entries" need no explicit fence here.
"""

from __future__ import annotations

import logging
import struct

from engine.errors import GuestMemoryError
from engine.machine.memory import GuestMemory
from engine.virtio.bulk import TableMemo
from engine.virtio.chain import (
    MAX_CHAIN_IOVECS,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    DescriptorChain,
    linear_table,
)

log = logging.getLogger(__name__)

VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

#: The split ring's largest size (virtio 1.2 §2.7: "Queue Size ... maximum 32768").
MAX_QUEUE_SIZE = 32768
#: An indirect table holds at most 65535 descriptors (§2.7.5.3.1).
MAX_INDIRECT_ENTRIES = 65535

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_U64_LIMIT = 1 << 64


class QueueError(Exception):
    """The driver broke the queue itself (avail index or head out of range): device needs reset."""


class ChainError(Exception):
    """One malformed descriptor chain: that request fails, the queue goes on."""


class _Area:
    """A validated guest range with fast typed access: one memoryview when it lies in one region.

    A range spanning two adjacent regions (possible with back-to-back NUMA nodes) falls back to
    copying through ``GuestMemory.read/write``.
    """

    __slots__ = ("addr", "buf", "mem")

    def __init__(self, mem: GuestMemory, addr: int, length: int) -> None:
        self.addr = addr
        self.mem = mem
        try:
            self.buf: memoryview | None = mem.view(addr, length)
        except GuestMemoryError:
            mem.slices(addr, length)  # raises when any byte is outside RAM
            self.buf = None

    def unpack(self, fmt: struct.Struct, off: int) -> tuple:
        if self.buf is not None:
            return fmt.unpack_from(self.buf, off)
        return fmt.unpack(self.mem.read(self.addr + off, fmt.size))

    def pack(self, fmt: struct.Struct, off: int, *values: int) -> None:
        if self.buf is not None:
            fmt.pack_into(self.buf, off, *values)
        else:
            self.mem.write(self.addr + off, fmt.pack(*values))


class Queue:
    """One split virtqueue: register state written by the transport, ring processing for devices.

    Usage by a device: ``while (chain := q.pop()) is not None: ...; q.add_used(chain, n)``, then
    ``if q.needs_notification(): interrupt.signal_used(i)``. ``pop`` re-enables driver kicks when
    the ring is empty (EVENT_IDX: avail_event) and re-checks, so no kick is ever lost.
    """

    def __init__(self, max_size: int) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(
                f"queue max size {max_size} is not a power of two in 1..{MAX_QUEUE_SIZE}"
            )
        self.max_size = max_size
        #: The queue's notify eventfd, set by the transport (vhost hands it to the kernel).
        self.kick_fd: int | None = None
        self.reset()

    def reset(self) -> None:
        """Back to the power-on register state (virtio 1.2 §4.2.2.1: size reads as max)."""
        self.size = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.next_avail = 0
        self.next_used = 0
        self.event_idx = False
        self.indirect = False
        self.errors = 0
        self._signalled_used = 0
        self._mem: GuestMemory | None = None
        self._desc: _Area | None = None
        self._avail: _Area | None = None
        self._used: _Area | None = None
        self._memo = TableMemo()  # the last indirect-table body the bulk checks accepted

    # -- set-up ------------------------------------------------------------------------------------

    def validate(self, mem: GuestMemory) -> str | None:
        """Why the ring registers are unusable, or None when they are fine (FC ``is_valid``)."""
        size = self.size
        if size == 0 or size > self.max_size or size & (size - 1):
            return f"queue size {size} is not a power of two in 1..{self.max_size}"
        rings = (
            ("descriptor table", self.desc_addr, 16, 16 * size),
            ("avail ring", self.avail_addr, 2, 6 + 2 * size),
            ("used ring", self.used_addr, 4, 6 + 8 * size),
        )
        for name, addr, align, length in rings:
            if addr % align:
                return f"{name} at {addr:#x} is not {align}-byte aligned"
            if addr + length > _U64_LIMIT or not mem.check_range(addr, length):
                return f"{name} [{addr:#x}, +{length:#x}) is outside guest RAM"
        return None

    def activate(
        self, mem: GuestMemory, *, event_idx: bool = False, indirect: bool = False
    ) -> None:
        """Bind to guest memory after DRIVER_OK. Raises ``QueueError`` when the rings are invalid."""
        reason = self.validate(mem)
        if reason is not None:
            raise QueueError(reason)
        size = self.size
        self._mem = mem
        self._desc = _Area(mem, self.desc_addr, 16 * size)
        self._avail = _Area(mem, self.avail_addr, 6 + 2 * size)
        self._used = _Area(mem, self.used_addr, 6 + 8 * size)
        self.event_idx = event_idx
        self.indirect = indirect
        self._signalled_used = self.next_used
        self._memo = TableMemo()

    @property
    def active(self) -> bool:
        return self._mem is not None

    def deactivate(self) -> None:
        """Drop the views into guest memory (so its mappings can be closed)."""
        self._mem = self._desc = self._avail = self._used = None
        self._memo = TableMemo()

    # -- avail side ----------------------------------------------------------------------------------

    def avail_idx(self) -> int:
        assert self._avail is not None
        return self._avail.unpack(_U16, 2)[0]

    def pending(self) -> int:
        """Chains the driver has made available and the device has not popped yet."""
        if self._avail is None:
            return 0
        n = (self.avail_idx() - self.next_avail) & 0xFFFF
        if n > self.size:
            raise QueueError(
                f"avail index is {n} entries ahead of the device, more than the queue size {self.size}"
            )
        return n

    def pop(self) -> DescriptorChain | None:
        """The next valid chain, or None when the ring is empty.

        Malformed chains are completed with used length 0 and skipped (counted in ``errors``).
        """
        avail, desc, used = self._avail, self._desc, self._used
        if (
            avail is not None
            and avail.buf is not None
            and desc is not None
            and desc.buf is not None
        ):
            fast = self._pop_fast(avail.buf, desc.buf, used.buf if used is not None else None)
            if fast is not False:
                return fast  # type: ignore[return-value]
        return self._pop_careful()

    def _pop_fast(
        self, avail: memoryview, desc: memoryview, used: memoryview | None
    ) -> DescriptorChain | bool | None:
        """``pop`` for rings that each lie in one region and a head that is a Linux-shaped
        indirect table: the same reads as the careful path, without its layers of calls (a
        request's fixed cost, which the nested rig multiplies). False: take the careful path
        (nothing consumed)."""
        size = self.size
        nxt = self.next_avail
        n = (_U16.unpack_from(avail, 2)[0] - nxt) & 0xFFFF
        if n == 0:
            if not self.event_idx or used is None:
                return None
            _U16.pack_into(used, 4 + 8 * size, nxt)  # ask for a kick, then look again
            n = (_U16.unpack_from(avail, 2)[0] - nxt) & 0xFFFF
            if n == 0:
                return None
        if n > size:
            return False  # the careful path raises the QueueError
        head = _U16.unpack_from(avail, 4 + 2 * (nxt % size))[0]
        if head >= size:
            return False
        addr, length, flags, _ = _DESC.unpack_from(desc, 16 * head)
        mem = self._mem
        if flags != VIRTQ_DESC_F_INDIRECT or not self.indirect or mem is None:
            return False
        if not 0 < length <= 16 * MAX_CHAIN_IOVECS or length % 16:
            return False
        r = mem.find_region(addr)
        if r is None or addr + length > r.end:
            return False
        off = addr - r.guest_addr
        data = r.mapping[off : off + length]  # one copy: no TOCTOU
        chain = linear_table(mem, head, data, r, self._memo)
        if chain is None:
            return False
        self.next_avail = (nxt + 1) & 0xFFFF
        return chain

    def _pop_careful(self) -> DescriptorChain | None:
        while True:
            if self.pending() == 0:
                if not self._enable_notification():
                    return None
                continue
            assert self._avail is not None
            head = self._avail.unpack(_U16, 4 + 2 * (self.next_avail % self.size))[0]
            self.next_avail = (self.next_avail + 1) & 0xFFFF
            if head >= self.size:
                raise QueueError(
                    f"avail ring names head descriptor {head}, queue size is {self.size}"
                )
            try:
                return self._walk(head)
            except (ChainError, GuestMemoryError) as e:
                self.errors += 1
                log.debug("virtqueue: dropping descriptor chain %d: %s", head, e)
                self._put_used(head, 0)

    def undo_pop(self) -> None:
        """Give the last popped chain back (a device that cannot serve it yet, e.g. net RX)."""
        self.next_avail = (self.next_avail - 1) & 0xFFFF

    def _enable_notification(self) -> bool:
        """Ask for kicks again; True when chains arrived meanwhile (pop must look again)."""
        if not self.event_idx or self._used is None:
            return False
        self._used.pack(_U16, 4 + 8 * self.size, self.next_avail)
        return self.pending() > 0

    def _walk(self, head: int) -> DescriptorChain:
        mem = self._mem
        table = self._desc
        assert mem is not None and table is not None
        chain = DescriptorChain(head)
        readable, writable = chain.readable, chain.writable
        idx, ttl, table_len, nested = head, self.size, self.size, False
        total = 0
        while True:
            if ttl == 0:
                raise ChainError("descriptor chain loops or is longer than its table")
            ttl -= 1
            addr, length, flags, nxt = table.unpack(_DESC, 16 * idx)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if nested:
                    raise ChainError("indirect descriptor inside an indirect table")
                if not self.indirect:
                    raise ChainError("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise ChainError("indirect descriptor also has NEXT set")
                if length == 0 or length % 16:
                    raise ChainError(f"indirect table length {length} is not a multiple of 16")
                table_len = length // 16
                if table_len > MAX_INDIRECT_ENTRIES:
                    raise ChainError(f"indirect table has {table_len} entries, limit 65535")
                if addr + length > _U64_LIMIT:
                    raise ChainError(f"indirect table at {addr:#x} wraps the address space")
                data = mem.read(addr, length)  # one read: no TOCTOU on the table
                if not readable and not writable:
                    fast = linear_table(mem, head, data)
                    if fast is not None:
                        return fast
                table = _Snapshot(data)
                idx, ttl, nested = 0, table_len, True
                continue
            if length:
                if addr + length > _U64_LIMIT:
                    raise ChainError(f"buffer at {addr:#x}+{length:#x} wraps the address space")
                r = mem.find_region(addr)
                if (r is None or addr + length > r.end) and not mem.check_range(addr, length):
                    raise ChainError(f"buffer [{addr:#x}, +{length:#x}) is outside guest RAM")
                if flags & VIRTQ_DESC_F_WRITE:
                    writable.append((addr, length))
                    chain.writable_len += length
                else:
                    if writable:
                        raise ChainError("device-readable buffer after a device-writable one")
                    readable.append((addr, length))
                    chain.readable_len += length
                total += length
                if total >= 1 << 32:
                    raise ChainError("descriptor chain is 4 GiB or longer")
                if len(readable) + len(writable) > MAX_CHAIN_IOVECS:
                    raise ChainError(f"descriptor chain has more than {MAX_CHAIN_IOVECS} buffers")
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            if nxt >= table_len:
                raise ChainError(f"next index {nxt} is outside a table of {table_len}")
            idx = nxt

    # -- used side ---------------------------------------------------------------------------------

    def add_used(self, chain: DescriptorChain, length: int) -> None:
        """Return ``chain`` with ``length`` bytes written (clamped to its writable length)."""
        if not 0 <= length <= chain.writable_len:
            log.error(
                "virtqueue: used length %d > writable %d (device bug)", length, chain.writable_len
            )
            length = max(0, min(length, chain.writable_len))
        self._put_used(chain.head, length)

    def _put_used(self, head: int, length: int) -> None:
        used = self._used
        if used is None:
            return
        slot = 4 + 8 * (self.next_used % self.size)
        self.next_used = nxt = (self.next_used + 1) & 0xFFFF
        buf = used.buf
        if buf is not None:  # the element, then the index: the driver never sees a stale one
            _USED_ELEM.pack_into(buf, slot, head, length)
            _U16.pack_into(buf, 2, nxt)
            return
        used.pack(_USED_ELEM, slot, head, length)
        used.pack(_U16, 2, nxt)

    def needs_notification(self) -> bool:
        """Whether the driver wants an interrupt for the used entries added since the last one."""
        if self._avail is None:
            return False
        new = self.next_used
        if self.event_idx:
            old = self._signalled_used
            self._signalled_used = new
            used_event = self._avail.unpack(_U16, 4 + 2 * self.size)[0]
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        if self._signalled_used == new:
            return False
        self._signalled_used = new
        return not self._avail.unpack(_U16, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT


class _Snapshot:
    """An indirect table copied out of guest memory, read like an ``_Area``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def unpack(self, fmt: struct.Struct, off: int) -> tuple:
        return fmt.unpack_from(self.data, off)
