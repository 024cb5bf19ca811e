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
from engine.virtio.chain import DescriptorChain, _span

_patterns: dict[int, tuple[int, int]] = {}


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


def _whole(n: int, lens: list[int], skip: int, length: int | None) -> tuple[int, int] | None:
    """The buffer range ``[i, j)`` that is exactly bytes ``[skip, skip+length)``, for the usual
    requests (all, all but the last, all but the first, the last alone); None otherwise."""
    if not n:
        return None
    if length is None:
        return (0, n) if skip == 0 else None
    total = sum(lens)
    if skip == 0 and length == total:
        return 0, n
    if n > 1 and skip == 0 and length == total - lens[-1]:
        return 0, n - 1
    if n > 1 and skip == lens[0] and length == total - skip:
        return 1, n
    if skip == total - lens[-1] and length == lens[-1]:
        return n - 1, n
    return None


def _iov_patterns(n: int) -> tuple[int, int]:
    """For an n-entry table read as one little-endian integer: the mask keeping each entry's
    address and length (dropping flags and next), and one 1 at each entry's address field."""
    pat = _patterns.get(n)
    if pat is None:
        ones = sum(1 << (128 * i) for i in range(n))
        pat = _patterns[n] = (((1 << 96) - 1) * ones, ones)
    return pat


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
    keep = mem.view(region.guest_addr, region.size)
    delta = region.host_addr - region.guest_addr
    table, all_lens = chain.table, chain.table_lens
    if table is not None and all_lens is not None:
        first = chain.split if writable else 0
        lens = all_lens[first:] if writable else all_lens[: chain.split]
        span = _whole(len(lens), lens, skip, length)
        if span is not None:
            i, j = span
            k = j - i
            mask, ones = _iov_patterns(k)
            raw = int.from_bytes(table[16 * (first + i) : 16 * (first + j)], "little") & mask
            iov = (raw + delta * ones).to_bytes(16 * k, "little")  # delta < 0 borrows nothing:
            return HostIovec(iov, k, sum(lens[i:j]), keep)  # every address is >= guest_addr
    addrs, lens = chain.spans(writable)
    offsets, sizes = _span(-delta, addrs, lens, skip, length)
    sizes_arr = array("Q", sizes)
    n = len(sizes_arr)
    iov_arr = array("Q", bytes(16 * n))
    iov_arr[0::2] = array("Q", offsets)
    iov_arr[1::2] = sizes_arr
    return HostIovec(iov_arr.tobytes(), n, sum(sizes_arr), keep)
