"""Host iovec arrays for descriptor chains: one preadv/pwritev per request, no view per buffer.

Why: a memoryview per 4 KiB page costs more than copying the page, and a 1 MiB O_DIRECT read
arrives as up to 256 pages. A chain that ``chain.linear_table`` checked keeps its raw indirect
table, whose entries (addr u64, len u32, flags u16, next u16) become ``struct iovec`` entries
(base u64, len u64) in three big-integer operations. Every address was checked to lie in the
chain's one RAM region, and a view of that region is held while the iovec is in use.
"""

from __future__ import annotations

from array import array

from engine.machine.memory import GuestMemory
from engine.virtio.bulk import host_table
from engine.virtio.chain import DescriptorChain, _span


class HostIovec:
    """A packed ``struct iovec[count]`` over guest buffers, for preadv/pwritev without views.

    Why: a memoryview per 4 KiB page costs more than the page's copy. ``keep`` is a view of the
    whole region, held for as long as the iovec is used, so the mapping cannot be unmapped (it
    raises BufferError on close) while the kernel writes through these addresses.
    """

    __slots__ = ("count", "data", "keep", "total")

    def __init__(self, data: bytes, count: int, total: int, keep: memoryview) -> None:
        self.data, self.count, self.total, self.keep = data, count, total, keep

    def aligned(self, align: int) -> bool:
        """Every buffer's host address and length is a multiple of ``align`` (for O_DIRECT)."""
        return not any(map((align - 1).__and__, memoryview(self.data).cast("Q")))


def _whole(
    n: int, first_len: int, last_len: int, total: int, skip: int, length: int | None
) -> tuple[int, int, int] | None:
    """The buffer range ``[i, j)`` and its byte count, of n buffers (the first and last of them this long, ``total``
    in all) that is exactly bytes ``[skip, skip+length)``, for the usual requests (all, all but
    the last, all but the first, the last alone); None otherwise."""
    if not n:
        return None
    if length is None:
        return (0, n, total) if skip == 0 else None
    if skip == 0 and length == total:
        return 0, n, total
    if n > 1 and skip == 0 and length == total - last_len:
        return 0, n - 1, length
    if n > 1 and skip == first_len and length == total - skip:
        return 1, n, length
    if skip == total - last_len and length == last_len:
        return n - 1, n, length
    return None


def host_iovec(
    mem: GuestMemory, chain: DescriptorChain, writable: bool, skip: int, length: int | None
) -> HostIovec | None:
    """The chain's readable or writable bytes ``[skip, skip+length)`` as a host iovec array, or
    None when the chain was not checked to lie in one region (use its views then).

    A chain from ``linear_table`` keeps its raw table, whose entries (addr u64, len u32, flags
    u16, next u16) become iovecs (base u64, len u64) in three big-integer operations: mask off
    flags and next, add host-minus-guest to every address, back to bytes. No Python object per
    buffer; addresses stay in the region because ``linear_table`` checked every buffer.
    """
    region = chain.region
    if region is None:
        return None
    keep = memoryview(region.mapping)  # pins the mapping (close raises) while the I/O runs
    table = chain.table
    if table is not None:
        n_all = len(table) // 16
        first, end = (chain.split, n_all) if writable else (0, chain.split)
        n = end - first
        total = chain.writable_len if writable else chain.readable_len
        if n:
            first_len, last_len = chain.entry_len(first), chain.entry_len(end - 1)
            span = _whole(n, first_len, last_len, total, skip, length)
            if span is not None:
                i, j, got = span
                iov = chain.host_table
                if iov is None:
                    iov = chain.host_table = host_table(chain.table_int, n_all, region)
                return HostIovec(iov[16 * (first + i) : 16 * (first + j)], j - i, got, keep)
    delta = region.host_addr - region.guest_addr
    addrs, lens = chain.spans(writable)
    offsets, sizes = _span(-delta, addrs, lens, skip, length)
    sizes_arr = array("Q", sizes)
    n = len(sizes_arr)
    iov_arr = array("Q", bytes(16 * n))
    iov_arr[0::2] = array("Q", offsets)
    iov_arr[1::2] = sizes_arr
    return HostIovec(iov_arr.tobytes(), n, sum(sizes_arr), keep)
