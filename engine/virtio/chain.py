"""A descriptor chain the queue's validator accepted, and how devices reach its bytes.

``Queue.pop`` (queue.py) builds a ``DescriptorChain`` only after every check there passed:
each buffer lies in guest RAM, device-readable buffers come first, there are at most
``MAX_CHAIN_BUFFERS`` of them and under 4 GiB in all. A chain is a value: the guest's later
writes to its descriptor table cannot change it. Devices read and write its bytes only through
``GuestMemory`` (copies, views, ``host_iovec``), which checks every range again.

Every accessor takes a byte range ``[offset, offset+length)`` of one direction, so a device
states how much it wants: buffers may alias (the spec does not forbid it), and a chain's total
length says nothing about what a device should copy or compute (docs/virtio.md).

Buffers are kept as columns (addresses, lengths) because a 1 MiB request has 256 of them and
the accessors work on whole columns with C-level passes (``accumulate``, ``bisect``, slices).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import accumulate

from engine.machine.memory import GuestMemory, HostIovec

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
#: Most buffers one chain may carry: IOV_MAX, so one preadv/pwritev/readv serves a request.
MAX_CHAIN_BUFFERS = 1024

Column = list[int]


class DescriptorChain:
    """One request: its head index and its guest buffers, split by direction, with totals."""

    __slots__ = ("head", "raddrs", "readable_len", "rlens", "waddrs", "wlens", "writable_len")

    def __init__(self, head: int, raddrs: Column, rlens: Column, waddrs: Column, wlens: Column):
        self.head = head
        self.raddrs, self.rlens = raddrs, rlens
        self.waddrs, self.wlens = waddrs, wlens
        self.readable_len = sum(rlens)
        self.writable_len = sum(wlens)

    @property
    def readable(self) -> list[tuple[int, int]]:
        """The device-readable buffers as ``(addr, len)`` pairs, in chain order."""
        return list(zip(self.raddrs, self.rlens, strict=True))

    @property
    def writable(self) -> list[tuple[int, int]]:
        """The device-writable buffers as ``(addr, len)`` pairs, in chain order."""
        return list(zip(self.waddrs, self.wlens, strict=True))

    def __repr__(self) -> str:
        return (
            f"DescriptorChain(head={self.head}, readable={self.readable}, writable={self.writable})"
        )

    def read(self, mem: GuestMemory, offset: int, length: int) -> bytes:
        """A copy of readable bytes ``[offset, offset+length)`` (fewer at the chain's end).

        ``length`` is required: the caller bounds what one request makes the host allocate.
        """
        addrs, lens = _cut(self.raddrs, self.rlens, self.readable_len, offset, length)
        if len(addrs) == 1:
            return mem.read(addrs[0], lens[0])
        return b"".join(map(mem.read, addrs, lens))

    def write(self, mem: GuestMemory, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy ``data`` into the writable buffers from ``offset``; returns the bytes written."""
        src = memoryview(data).cast("B")
        pos = 0
        for addr, n in zip(
            *_cut(self.waddrs, self.wlens, self.writable_len, offset, len(src)), strict=True
        ):
            mem.write(addr, src[pos : pos + n])
            pos += n
        return pos

    def read_views(
        self, mem: GuestMemory, offset: int = 0, length: int | None = None
    ) -> list[memoryview]:
        """Zero-copy views of readable bytes (for writev): views, not copies, of at most
        ``MAX_CHAIN_BUFFERS`` buffers (plus one per region seam a buffer spans)."""
        return _views(mem, *_cut(self.raddrs, self.rlens, self.readable_len, offset, length))

    def write_views(
        self, mem: GuestMemory, offset: int = 0, length: int | None = None
    ) -> list[memoryview]:
        """Zero-copy views of writable bytes (for readv)."""
        return _views(mem, *_cut(self.waddrs, self.wlens, self.writable_len, offset, length))

    def host_iovec(
        self, mem: GuestMemory, writable: bool, offset: int = 0, length: int | None = None
    ) -> HostIovec:
        """One direction's bytes ``[offset, offset+length)`` as a host iovec (for preadv/pwritev)."""
        if writable:
            return mem.host_iovec(*_cut(self.waddrs, self.wlens, self.writable_len, offset, length))
        return mem.host_iovec(*_cut(self.raddrs, self.rlens, self.readable_len, offset, length))


def _cut(
    addrs: Column, lens: Column, total: int, offset: int, length: int | None
) -> tuple[Column, Column]:
    """The buffers holding bytes ``[offset, offset+length)`` of ``addrs``/``lens`` (``total``
    bytes) laid end to end (``length`` None: to the end; nothing past the end), trimmed to
    exactly those bytes. Do not modify the lists returned."""
    if offset < 0 or (length is not None and length <= 0) or offset >= total:
        return [], []
    stop = total if length is None else min(total, offset + length)
    # The ranges devices ask for most, in one step: all of it (net, rng), a header inside the
    # first buffer, a status byte inside the last one, all but the last buffer (blk data).
    if offset == 0 and stop == total:
        return addrs, lens
    if stop <= lens[0]:
        return [addrs[0] + offset], [stop - offset]
    tail = total - lens[-1]  # where the last buffer starts
    if offset >= tail:
        return [addrs[-1] + offset - tail], [stop - offset]
    if offset == 0 and stop == tail:
        return addrs[:-1], lens[:-1]
    ends = list(accumulate(lens))  # ends[i]: one past buffer i's last byte
    first = bisect_right(ends, offset)  # the buffer holding byte ``offset``
    last = bisect_left(ends, stop)  # the buffer holding byte ``stop - 1``
    out_addrs, out_lens = addrs[first : last + 1], lens[first : last + 1]
    skip = offset - (ends[first] - lens[first])
    out_addrs[0] += skip
    out_lens[0] -= skip
    out_lens[-1] -= ends[last] - stop
    return out_addrs, out_lens


def _views(mem: GuestMemory, addrs: Column, lens: Column) -> list[memoryview]:
    out: list[memoryview] = []
    for addr, n in zip(addrs, lens, strict=True):
        out.extend(mem.slices(addr, n))
    return out
