"""Descriptor chains: the validated buffers of one request, and the fast path that builds them.

Why a fast path: Linux puts every multi-buffer request in an indirect table, and a 1 MiB
O_DIRECT read arrives as up to 256 scattered 4 KiB pages. Walking such a table one descriptor
at a time costs a few microseconds of Python per buffer, which is most of a request's cost
(and, in the nested rig, where all of L1 runs under TCG, most of the disk's throughput).
``linear_table`` parses a whole table with one ``struct`` call and checks it with C-level
passes over tuples (``count``, ``min``/``max``, ``map``); it accepts only the shape Linux
writes (entries in table order, readable then writable, all in one RAM region) and returns
None for anything else, which then takes the careful one-descriptor-at-a-time walk in
``queue.py`` (which also produces the errors). Views of a chain built here are slices of one
region view, made the same C-level way.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from itertools import accumulate, repeat
from operator import add, itemgetter, sub

from engine.machine.memory import GuestMemory, GuestRegion
from engine.virtio.bulk import TableMemo, fit, fold, host_table

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
#: Most buffers one chain may carry: IOV_MAX, so one preadv/pwritev/readv serves a request.
MAX_CHAIN_IOVECS = 1024

_READ_NEXT = VIRTQ_DESC_F_NEXT
_WRITE_NEXT = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE
_ADDR = itemgetter(0)
_LEN = itemgetter(1)
_LEN32 = struct.Struct("<I")
_tables: dict[int, tuple[bytes, bytes, bytes]] = {}


class DescriptorChain:
    """A validated chain: guest ``(addr, len)`` buffers split by direction, with their totals.

    Built once by ``Queue.pop`` from a single read of each descriptor; devices read and write
    the buffers through the helpers below, which go through ``GuestMemory`` again, so even a
    buffer the guest unmaps or changes later cannot reach outside guest RAM. ``region`` is set
    when every buffer was checked to lie in that one region (views are then plain slices).
    The fast path keeps the buffers as parallel address/length tuples (``spans``) and builds
    the ``readable``/``writable`` pair lists only when a device asks for them.
    """

    __slots__ = (
        "_lens",
        "_lists",
        "_spans",
        "head",
        "host_table",
        "readable_len",
        "region",
        "split",
        "table",
        "table_int",
        "writable_len",
    )

    def __init__(
        self,
        head: int,
        readable: list[tuple[int, int]] | None = None,
        writable: list[tuple[int, int]] | None = None,
        readable_len: int = 0,
        writable_len: int = 0,
        region: GuestRegion | None = None,
        spans: tuple[list[int], list[int], list[int], list[int]] | None = None,
        table: bytes | None = None,
        split: int = 0,
        lens: list[int] | None = None,
        table_int: int = 0,
        host_table: bytes | None = None,
    ) -> None:
        self.head = head
        #: the raw indirect table this chain came from (fast path only), and the index of its
        #: first device-writable entry
        self.table = table
        self.split = split
        self.readable_len = readable_len
        self.writable_len = writable_len
        self.region = region
        self._lens = lens
        #: ``table`` read as one little-endian integer (fast path: host iovecs are cut from it)
        self.table_int = table_int
        #: the whole table as host ``struct iovec``s (fast path; made when first needed)
        self.host_table = host_table
        self._spans = spans
        self._lists: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None
        if spans is None and table is None:
            self._lists = (readable if readable is not None else [], writable or [])

    @property
    def table_lens(self) -> list[int] | None:
        """Every table entry's length (fast path), made on first use: the hot path needs only
        the totals and the first and last lengths (``entry_len``)."""
        if self._lens is None and self.table is not None:
            self._lens = memoryview(self.table).cast("I")[2::4].tolist()
        return self._lens

    def entry_len(self, i: int) -> int:
        """The length of table entry ``i`` (fast path only)."""
        assert self.table is not None
        return _LEN32.unpack_from(self.table, 16 * i + 8)[0]

    def _pairs(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        if self._lists is None:
            (ra, rl), (wa, wl) = self.spans(False), self.spans(True)
            self._lists = (list(zip(ra, rl, strict=True)), list(zip(wa, wl, strict=True)))
        return self._lists

    @property
    def readable(self) -> list[tuple[int, int]]:
        return self._pairs()[0]

    @property
    def writable(self) -> list[tuple[int, int]]:
        return self._pairs()[1]

    def spans(self, writable: bool) -> tuple[list[int], list[int]]:
        """``(addresses, lengths)`` of one direction's buffers, in chain order."""
        if self._spans is None and self.table is not None and self.table_lens is not None:
            addrs = memoryview(self.table).cast("Q")[0::2].tolist()
            lens, k = self.table_lens, self.split
            self._spans = (addrs[:k], lens[:k], addrs[k:], lens[k:])
        if self._spans is not None:
            ra, rl, wa, wl = self._spans
            return (wa, wl) if writable else (ra, rl)
        bufs = self._pairs()[1 if writable else 0]
        return list(map(_ADDR, bufs)), list(map(_LEN, bufs))

    def __repr__(self) -> str:
        return (
            f"DescriptorChain(head={self.head}, readable={self.readable}, writable={self.writable})"
        )

    def read_views(
        self, mem: GuestMemory, skip: int = 0, length: int | None = None
    ) -> list[memoryview]:
        """Views of readable bytes ``[skip, skip+length)`` of the chain (zero-copy, for writev)."""
        if self.region is not None:
            return _region_views(mem, self.region, *self.spans(False), skip, length)
        return _views(mem, self.readable, skip, length)

    def write_views(
        self, mem: GuestMemory, skip: int = 0, length: int | None = None
    ) -> list[memoryview]:
        """Views of writable bytes ``[skip, skip+length)`` of the chain (zero-copy, for readv)."""
        if self.region is not None:
            return _region_views(mem, self.region, *self.spans(True), skip, length)
        return _views(mem, self.writable, skip, length)

    def read(self, mem: GuestMemory, skip: int = 0, length: int | None = None) -> bytes:
        """Copy readable bytes out of guest memory (for small headers and control messages)."""
        if (
            self.table is not None
            and length is not None
            and self.split
            and skip + length <= self.entry_len(0)
        ):
            assert self.region is not None  # a request header in buffer 0: one read
            off = int.from_bytes(self.table[:8], "little") + skip - self.region.guest_addr
            return self.region.mapping[off : off + length]  # checked inside the region
        return b"".join(bytes(v) for v in self.read_views(mem, skip, length))

    def write(self, mem: GuestMemory, data: bytes | bytearray | memoryview, skip: int = 0) -> int:
        """Copy ``data`` into the writable buffers from offset ``skip``; returns the bytes written."""
        table = self.table
        if (
            table is not None
            and 16 * self.split < len(table)
            and skip + len(data) <= self.writable_len
        ):
            into_last = skip - (self.writable_len - self.entry_len(len(table) // 16 - 1))
            if into_last >= 0:  # a status byte in the last buffer: one write
                r = self.region  # the buffer was checked to lie inside it
                assert r is not None
                off = int.from_bytes(self.table[-16:-8], "little") + into_last - r.guest_addr
                r.mapping[off : off + len(data)] = data
                return len(data)
        src = memoryview(data).cast("B")
        pos = 0
        for v in self.write_views(mem, skip, len(src)):
            n = len(v)
            v[:] = src[pos : pos + n]
            pos += n
        return pos


def _views(
    mem: GuestMemory, bufs: list[tuple[int, int]], skip: int, length: int | None
) -> list[memoryview]:
    out: list[memoryview] = []
    left = -1 if length is None else length
    for addr, blen in bufs:
        if left == 0:
            break
        if skip >= blen:
            skip -= blen
            continue
        n = blen - skip if left < 0 else min(blen - skip, left)
        out.extend(mem.slices(addr + skip, n))
        skip = 0
        if left > 0:
            left -= n
    return out


def _span(
    base: int, addrs: tuple[int, ...], lens: tuple[int, ...], skip: int, length: int | None
) -> tuple[list[int] | map, tuple[int, ...] | list[int]]:
    """Offsets from ``base`` and lengths of chain bytes ``[skip, skip+length)``, C-level passes.

    The cases devices use most (everything, everything but the last buffer, everything but the
    first: blk data between its header and status byte) take whole buffers without a search.
    """
    n = len(lens)
    if not n:
        return [], ()
    if skip == 0 and length is None:
        return map(sub, addrs, repeat(base)), lens
    if n > 1 and length is not None:
        total = sum(lens)
        if skip == 0 and length == total - lens[-1]:
            return map(sub, addrs[:-1], repeat(base)), lens[:-1]
        if skip == lens[0] and length == total - skip:
            return map(sub, addrs[1:], repeat(base)), lens[1:]
        if skip == total - lens[-1] and length == lens[-1]:  # a trailing status byte
            return [addrs[-1] - base], lens[-1:]
    ends = list(accumulate(lens))  # ends[i]: chain offset one past buffer i
    end = ends[-1] if length is None else min(ends[-1], skip + length)
    if skip >= end:
        return [], ()
    first = bisect_right(ends, skip)  # the buffer holding byte `skip`
    last = bisect_left(ends, end)  # the buffer holding byte `end - 1`
    starts = list(map(sub, addrs[first : last + 1], repeat(base)))
    sizes = list(lens[first : last + 1])
    cut = skip - (ends[first] - lens[first])
    starts[0] += cut
    sizes[0] -= cut
    sizes[-1] -= ends[last] - end
    return starts, sizes


def _region_views(
    mem: GuestMemory,
    region: GuestRegion,
    addrs: list[int],
    lens: list[int],
    skip: int,
    length: int | None,
) -> list[memoryview]:
    """``_views`` for buffers known to lie in ``region``: no per-buffer lookup."""
    starts, sizes = _span(region.guest_addr, addrs, lens, skip, length)
    starts = list(starts)
    if not starts:
        return []
    rv = mem.view(region.guest_addr, region.size)
    return list(map(rv.__getitem__, map(slice, starts, map(add, starts, sizes))))


def _linked(n: int) -> tuple[bytes, bytes, bytes]:
    """Low and high bytes of the ``next`` fields 1..n-1 of a linear n-entry table, and n zeros."""
    t = _tables.get(n)
    if t is None:
        t = _tables[n] = (
            bytes(i & 0xFF for i in range(1, n)),
            bytes(i >> 8 for i in range(1, n)),
            bytes(n),
        )
    return t


def linear_table(
    mem: GuestMemory,
    head: int,
    data: bytes,
    hint: GuestRegion | None = None,
    memo: TableMemo | None = None,
) -> DescriptorChain | None:
    """The chain of an indirect table in Linux's shape, or None (then walk it one by one).

    Linux's shape: entry i links to i+1 with NEXT set on all but the last, readable entries
    (flags NEXT) before writable ones (NEXT|WRITE), the last entry 0 or WRITE, no zero lengths,
    every buffer inside one RAM region, at most ``MAX_CHAIN_IOVECS`` entries, under 4 GiB in
    all. Everything the careful walk would refuse is outside this shape. The fields are read
    with strided byte slices and memoryview casts: C-level passes, one Python int per address
    and length, none per flag. ``hint``: the region to try first (the table's own, usually
    the buffers' too), which saves the lookup. ``memo``: the queue's ``TableMemo`` (a body
    equal to the last accepted one skips the bulk checks, the ends are checked alone).
    """
    n = len(data) // 16
    if not 0 < n <= MAX_CHAIN_IOVECS or len(data) != 16 * n:
        return None
    next_lo, next_hi, zeros = _linked(n)
    flags = data[12::16]
    if data[13::16] != zeros or data[14 : 16 * n - 16 : 16] != next_lo:
        return None
    if data[15 : 16 * n - 16 : 16] != next_hi:
        return None
    last = flags[-1]
    body = flags[:-1]
    n_write = body.count(_WRITE_NEXT)
    n_read = n - 1 - n_write
    if body.count(_READ_NEXT) != n_read or (n_write and body.index(_WRITE_NEXT) != n_read):
        return None
    if last == VIRTQ_DESC_F_WRITE:
        split = n_read
    elif last == 0 and not n_write:
        split = n
    else:
        return None
    if memo is not None and n >= 3:
        got = memo.recall(data, split)
        if got is not None:
            region, total, readable_len, host = got
            return DescriptorChain(
                head,
                None,
                None,
                readable_len,
                total - readable_len,
                region,
                table=data,
                split=split,
                host_table=host,
            )
    t = int.from_bytes(data, "little")
    region = hint
    ok = None if region is None else fit(t, n, region)
    if ok is None:
        region = mem.find_region(int.from_bytes(data[:8], "little"))
        if region is None or region is hint:
            return None
        ok = fit(t, n, region)
        if ok is None:
            return None
    lens, k = ok
    total = fold(lens, n, k.masks)
    if total >= 1 << 32:
        return None
    if split == 1:
        readable_len = _LEN32.unpack_from(data, 8)[0]
    elif split == n:
        readable_len = total
    else:
        readable_len = fold(lens & k.masks[split], split, k.masks)
    host = None
    if memo is not None and n >= 3:
        host = host_table(t, n, region)
        memo.remember(data, split, region, total, readable_len, host)
    return DescriptorChain(
        head,
        None,
        None,
        readable_len,
        total - readable_len,
        region,
        table=data,
        split=split,
        table_int=t,
        host_table=host,
    )
