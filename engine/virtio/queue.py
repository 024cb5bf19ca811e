"""The split virtqueue (virtio 1.2 §2.7) and the one validator of everything a driver puts in it.

The guest is hostile. This file holds every check the device makes on the rings and the
descriptor chains, each next to the section of the virtio 1.2 specification it enforces;
docs/virtio.md lists them in one table. The queue never touches KVM, files or threads, and
reaches guest memory only through ``GuestMemory``, which bounds-checks every access again.
The device's own side of the rings (writing used entries, EVENT_IDX and NO_INTERRUPT, giving a
chain back, snapshot state) is ``queue_ring.py``, a base class of ``Queue``: it checks no guest
value, so this file is the whole validator.

Two outcomes for a broken driver:

- ``ChainError``: one malformed descriptor chain. ``pop`` returns it to the driver with used
  length 0, counts it in ``errors`` and goes on with the next chain.
- ``QueueError``: the ring itself is broken (bad placement, avail index or head). The queue
  cannot be trusted any more; the transport sets DEVICE_NEEDS_RESET (§2.1.2).

Every value the guest controls is read once and checked before use (a descriptor is unpacked
from one read; an indirect table is copied out whole), so a driver that rewrites its ring
while the device reads it changes nothing the checks saw.

Memory ordering: x86 keeps stores in order and loads in order, and CPython performs each
``pack_into``/``unpack_from`` as one copy, so "write the used element, then bump used.idx" and
"read avail.idx, then the ring entries" need no explicit fence here.
"""

from __future__ import annotations

import logging
import struct
from itertools import compress
from typing import TypeVar

from engine.machine.memory import GuestMemory
from engine.virtio.chain import (
    MAX_CHAIN_BUFFERS,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    DescriptorChain,
)
from engine.virtio.queue_ring import U16, VIRTQ_AVAIL_F_NO_INTERRUPT, QueueState, UsedRing

__all__ = [
    "MAX_CHAIN_BUFFERS",
    "MAX_INDIRECT_ENTRIES",
    "MAX_QUEUE_SIZE",
    "VIRTQ_AVAIL_F_NO_INTERRUPT",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "ChainError",
    "DescriptorChain",
    "Queue",
    "QueueError",
    "QueueState",
]

log = logging.getLogger(__name__)

#: §2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is 32768."
MAX_QUEUE_SIZE = 32768
#: Entries an indirect table may have. The spec's ceiling is 65535 (``next`` is a u16); §2.7.4.1
#: lets a device set "a reasonable limit", and one chain carries at most MAX_CHAIN_BUFFERS
#: buffers anyway, so a longer table could only hold padding the walk would have to step over.
MAX_INDIRECT_ENTRIES = MAX_CHAIN_BUFFERS

_DESC = struct.Struct("<QIHH")  # §2.7.5 struct virtq_desc: addr, len, flags, next
_CHAIN_LIMIT = 1 << 32
_WRITE_BIT = bytes(b & VIRTQ_DESC_F_WRITE for b in range(256))  # a bytes.translate table
_C = TypeVar("_C", list[int], bytes)


class QueueError(Exception):
    """The driver broke the queue itself: the device needs a reset."""


class ChainError(Exception):
    """One malformed descriptor chain: that request fails, the queue goes on."""


class Queue(UsedRing):
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
        self._paths = _PathCache()

    # -- ring placement: checked once, at DRIVER_OK ------------------------------------------------

    def validate(self, mem: GuestMemory) -> str | None:
        """Why the ring registers are unusable, or None when they are fine."""
        size = self.size
        # §2.7: the size is a power of 2, at most 32768; §4.2.2.2 (MMIO): at most QueueNumMax.
        if size == 0 or size > self.max_size or size & (size - 1):
            return f"queue size {size} is not a power of two in 1..{self.max_size}"
        rings = (  # §2.7's table: each part's alignment and size
            ("descriptor table", self.desc_addr, 16, 16 * size),
            ("avail ring", self.avail_addr, 2, 6 + 2 * size),
            ("used ring", self.used_addr, 4, 6 + 8 * size),
        )
        for name, addr, align, length in rings:
            # §2.7.1: "the physical address of the first byte of each virtqueue part is a
            # multiple of the specified alignment value".
            if addr % align:
                return f"{name} at {addr:#x} is not {align}-byte aligned"
            # Each part wholly in guest RAM (GuestMemory would refuse each access anyway; this
            # turns a misplaced ring into one clear error at DRIVER_OK).
            if not mem.check_range(addr, length):
                return f"{name} [{addr:#x}, +{length:#x}) is outside guest RAM"
        return None

    def activate(
        self, mem: GuestMemory, *, event_idx: bool = False, indirect: bool = False
    ) -> None:
        """Bind to guest memory after DRIVER_OK. Raises ``QueueError`` when the rings are invalid."""
        reason = self.validate(mem)
        if reason is not None:
            raise QueueError(reason)
        self._mem = mem
        self.event_idx = event_idx
        self.indirect = indirect
        self._signalled_used = self.next_used

    @property
    def active(self) -> bool:
        return self._mem is not None

    def deactivate(self) -> None:
        self._mem = None

    # -- avail side ----------------------------------------------------------------------------------

    def avail_idx(self) -> int:
        assert self._mem is not None
        return self._mem.read_struct(self.avail_addr + 2, U16)[0]

    def pending(self) -> int:
        """Chains the driver has made available and the device has not popped yet."""
        if self._mem is None:
            return 0
        n = (self.avail_idx() - self.next_avail) & 0xFFFF
        # The ring has ``size`` entries, so no more than ``size`` chains can be pending (§2.7.13:
        # "the ring buffer is the same size as the descriptor table"); a larger jump, or an index
        # that went backwards (§2.7.6.1: "MUST NOT decrement the available idx"), is a broken ring.
        if n > self.size:
            raise QueueError(
                f"avail index is {n} entries ahead of the device, more than the queue size {self.size}"
            )
        return n

    def pop(self) -> DescriptorChain | None:
        """The next valid chain, or None when the ring is empty. Raises ``QueueError``.

        Malformed chains are returned to the driver with used length 0, counted in ``errors``
        and skipped, so a caller only ever sees chains that passed every check.
        """
        mem = self._mem
        if mem is None:
            return None
        while True:
            if self.pending() == 0 and not self._enable_notification():
                return None
            slot = self.avail_addr + 4 + 2 * (self.next_avail % self.size)
            head = mem.read_struct(slot, U16)[0]
            self.next_avail = (self.next_avail + 1) & 0xFFFF
            # §2.7.6: a ring entry "refers to the head of a descriptor chain", an index into the
            # descriptor table of ``size`` entries.
            if head >= self.size:
                raise QueueError(
                    f"avail ring names head descriptor {head}, queue size is {self.size}"
                )
            try:
                return self._read_chain(mem, head)
            except ChainError as e:
                self.errors += 1
                log.debug("virtqueue: dropping descriptor chain %d: %s", head, e)
                self._put_used(head, 0)

    # -- the descriptor chain validator ----------------------------------------------------------------

    def _read_chain(self, mem: GuestMemory, head: int) -> DescriptorChain:
        """Walk the chain at ``head`` and return its buffers, or raise ``ChainError``.

        Two steps: the walk follows ``next`` and checks the chain's structure, collecting every
        descriptor it meets; then ``_buffers`` checks what they describe. The walk starts in the
        ring's descriptor table and may end in one indirect table (§2.7.5.3.2: "zero or more
        normal chained descriptors followed by a single descriptor with
        flags&VIRTQ_DESC_F_INDIRECT").
        """
        addrs: list[int] = []
        lens: list[int] = []
        writes = bytearray()  # each descriptor's VIRTQ_DESC_F_WRITE bit (2 or 0)
        # §2.7.5.2: "loops in the descriptor chain are forbidden"; §2.7.5.3.1: a chain is no
        # longer than the Queue Size. A table of n entries yields at most n descriptors, so a
        # walk that wants more is a loop.
        idx = head
        for _ in range(self.size):
            addr, length, f, nxt = mem.read_struct(self.desc_addr + 16 * idx, _DESC)
            if f & VIRTQ_DESC_F_INDIRECT:
                table = self._indirect_table(mem, addr, length, f)
                path = self._paths.path(table)
                addrs += _pick(table.addrs, path)
                lens += _pick(table.lens, path)
                writes += _pick(table.writes, path)
                break  # the indirect descriptor ends the chain (NEXT is refused on it)
            addrs.append(addr)
            lens.append(length)
            writes.append(f & VIRTQ_DESC_F_WRITE)
            if not f & VIRTQ_DESC_F_NEXT:
                break
            # §2.7.5: ``next`` indexes the descriptor table, which has ``size`` entries.
            if nxt >= self.size:
                raise ChainError(f"next index {nxt} is outside a table of {self.size}")
            idx = nxt
        else:
            raise ChainError(f"descriptor chain loops or is longer than the queue ({self.size})")
        return _buffers(mem, head, addrs, lens, writes)

    def _indirect_table(self, mem: GuestMemory, addr: int, length: int, f: int) -> _Table:
        """The checks on a descriptor that names an indirect table (§2.7.5.3), and one copy of it."""
        # §2.7.5.3.1: only when VIRTIO_F_INDIRECT_DESC was negotiated ...
        if not self.indirect:
            raise ChainError("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
        # ... and never together with NEXT: the table ends the chain.
        if f & VIRTQ_DESC_F_NEXT:
            raise ChainError("indirect descriptor also has NEXT set")
        # §2.7.5.3: the table is ``struct virtq_desc desc[len / 16]``.
        if length == 0 or length % 16:
            raise ChainError(f"indirect table length {length} is not a multiple of 16")
        if length // 16 > MAX_INDIRECT_ENTRIES:  # §2.7.4.1: the device's limit
            raise ChainError(
                f"indirect table has {length // 16} entries, limit {MAX_INDIRECT_ENTRIES}"
            )
        if not mem.check_range(addr, length):
            raise ChainError(f"indirect table [{addr:#x}, +{length:#x}) is outside guest RAM")
        # §2.7.5.3.2: the device ignores WRITE on this descriptor. One read: what the walk
        # checks is what the device uses, whatever the driver writes there meanwhile.
        return _Table(mem.read(addr, length))


class _Table:
    """An indirect table copied out of guest memory, as columns (no Python object per entry
    is made until the walk's path picks the entries)."""

    __slots__ = ("addrs", "lens", "links", "writes")

    def __init__(self, data: bytes) -> None:
        words = memoryview(data).cast("I")
        self.addrs = memoryview(data).cast("Q")[0::2].tolist()
        self.lens = words[2::4].tolist()
        self.writes = data[12::16].translate(_WRITE_BIT)  # flags' low bytes, WRITE bit only
        #: flags and next of every entry, as bytes: all that decides the walk's path
        self.links = words[3::4].tobytes()


def _table_path(links: bytes) -> range | tuple[int, ...]:
    """The entries a walk visits in an indirect table, in order, from ``links`` (each entry's
    flags and next); raises ``ChainError``. A ``range`` when they are the first k entries in
    table order (as Linux writes its tables)."""
    words = memoryview(links).cast("H")
    flags, nexts = words[0::2].tolist(), words[1::2].tolist()
    n = len(flags)
    path: list[int] = []
    idx = 0  # §2.7.5.3: "The first indirect descriptor is located at start of the ... table"
    for _ in range(n):  # n entries yield at most n descriptors: more is a loop (§2.7.5.2)
        f = flags[idx]
        # §2.7.5.3.1: no VIRTQ_DESC_F_INDIRECT "within an indirect descriptor".
        if f & VIRTQ_DESC_F_INDIRECT:
            raise ChainError("indirect descriptor inside an indirect table")
        path.append(idx)
        if not f & VIRTQ_DESC_F_NEXT:
            return range(len(path)) if path == list(range(len(path))) else tuple(path)
        idx = nexts[idx]
        # §2.7.5.3: "additional indirect descriptors are chained by next" within the table.
        if idx >= n:
            raise ChainError(f"next index {idx} is outside an indirect table of {n}")
    raise ChainError(f"descriptor chain loops or is longer than its indirect table ({n})")


class _PathCache:
    """``_table_path`` remembered per queue: the path depends on the entries' flags and next
    fields alone, which repeat request after request (only the header and data addresses
    move), so the walk over a 258-entry table of a 1 MiB read is a dict lookup. A cache of a
    pure function, keyed on all of its input: every request still gets the same verdict."""

    LIMIT = 64

    def __init__(self) -> None:
        self._paths: dict[bytes, range | tuple[int, ...]] = {}

    def path(self, table: _Table) -> range | tuple[int, ...]:
        path = self._paths.get(table.links)
        if path is None:
            path = _table_path(table.links)
            if len(self._paths) >= self.LIMIT:
                self._paths.clear()
            self._paths[table.links] = path
        return path


def _pick(column: _C, path: range | tuple[int, ...]) -> _C:
    """``column``'s entries in ``path`` order (a slice when the path is a prefix)."""
    if isinstance(path, range):
        return column[: len(path)]
    return type(column)(map(column.__getitem__, path))


def _buffers(
    mem: GuestMemory, head: int, addrs: list[int], lens: list[int], writes: bytearray
) -> DescriptorChain:
    """The checks on the buffers the walk collected (in chain order), made with C-level passes
    over the columns: a 1 MiB request has 256 of them."""
    # §2.7.4.2: "The driver MUST place any device-writable descriptor elements after any
    # device-readable descriptor elements": the WRITE bits, in chain order, never fall.
    split = writes.count(0)  # descriptors before the first writable one, when the order holds
    if writes[split:].count(0):
        raise ChainError("device-readable buffer after a device-writable one")
    # §2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total".
    if sum(lens) >= _CHAIN_LIMIT:
        raise ChainError("descriptor chain is 4 GiB or longer")
    raddrs, rlens, waddrs, wlens = addrs[:split], lens[:split], addrs[split:], lens[split:]
    if 0 in lens:  # a zero-length buffer touches nothing: walked and ordered, then left out
        raddrs, waddrs = list(compress(raddrs, rlens)), list(compress(waddrs, wlens))
        rlens, wlens = list(filter(None, rlens)), list(filter(None, wlens))
    # §2.7.4.1: "The device MAY have a reasonable limit of descriptors it will allow in a
    # chain": IOV_MAX, so one preadv/pwritev/readv/writev serves a request.
    if len(rlens) + len(wlens) > MAX_CHAIN_BUFFERS:
        raise ChainError(f"descriptor chain has more than {MAX_CHAIN_BUFFERS} buffers")
    # Every byte of every buffer is guest RAM (which also rules out a wrap past 2^64).
    for a, n in ((raddrs, rlens), (waddrs, wlens)):
        if not mem.check_ranges(a, n):
            bad = next((x, y) for x, y in zip(a, n, strict=True) if not mem.check_range(x, y))
            raise ChainError(f"buffer [{bad[0]:#x}, +{bad[1]:#x}) is outside guest RAM")
    return DescriptorChain(head, raddrs, rlens, waddrs, wlens)
