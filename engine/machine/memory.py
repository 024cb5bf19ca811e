"""Guest physical memory: mmap'd regions and bounds-checked accessors.

Everything that touches guest memory (loader, ACPI writer, virtqueues, devices) goes through
``GuestMemory``; nobody holds the raw mmap. Every access is checked against the regions and
raises ``GuestMemoryError(addr, length)`` when any byte of it falls outside guest RAM, so a
hostile guest address can fail a request but never reach host memory. That includes the host
addresses handed to the kernel for preadv/pwritev (``host_iovec``). Like rust-vmm's
vm-memory, a test builds one in a call (``GuestMemory.anonymous([(0, 1 << 20)])``) without KVM.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import mmap
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import add

from engine.errors import GuestMemoryError

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
PAGE = 4096
MADV_REMOVE = getattr(mmap, "MADV_REMOVE", 9)
#: How many recent ``host_iovec`` answers each ``GuestMemory`` keeps.
IOVEC_CACHE = 64
#: A ``host_iovec`` answer: packed iovecs, their count and bytes, the regions they point into.
_Iovec = tuple[bytes, int, int, tuple["GuestRegion", ...]]


@dataclass(slots=True, eq=False)
class GuestRegion:
    """One contiguous range of guest physical memory backed by one host mapping."""

    guest_addr: int
    size: int
    mapping: mmap.mmap
    name: str = "ram"
    file_backed: bool = False
    shared: bool = False
    _anchor: ctypes.c_char | None = field(default=None, repr=False)
    #: one past the last guest address: a plain int, not a property, because the virtqueue
    #: checks buffers against it on every request (a region's range never changes)
    end: int = field(init=False, repr=False)
    _host: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.end = self.guest_addr + self.size

    @property
    def host_addr(self) -> int:
        """Host virtual address of the mapping (for KVM_SET_USER_MEMORY_REGION, mbind, madvise)."""
        if self._host is None:
            self._anchor = ctypes.c_char.from_buffer(self.mapping)
            self._host = ctypes.addressof(self._anchor)
        return self._host

    def release(self) -> None:
        self._anchor = None
        self._host = None
        try:
            self.mapping.close()
        except BufferError:
            # A memoryview still points into the mapping; it is unmapped when that view dies.
            pass


def map_anonymous(size: int, *, shared: bool = False) -> mmap.mmap:
    """An anonymous, zero-filled mapping (MAP_PRIVATE unless ``shared``)."""
    flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS
    return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


class GuestMemory:
    """Guest RAM as a sorted set of non-overlapping regions."""

    def __init__(self, regions: Iterable[GuestRegion]) -> None:
        self._regions: list[GuestRegion] = sorted(regions, key=lambda r: r.guest_addr)
        for a, b in zip(self._regions, self._regions[1:], strict=False):
            if a.end > b.guest_addr:
                raise ValueError(
                    f"guest regions overlap: {a.guest_addr:#x}+{a.size:#x} and {b.guest_addr:#x}"
                )
        for r in self._regions:
            if r.size <= 0 or r.size > len(r.mapping):
                raise ValueError(
                    f"region at {r.guest_addr:#x}: size {r.size:#x} does not fit its mapping"
                )
        self._starts = [r.guest_addr for r in self._regions]
        #: the region the last lookup found (guests touch one region nearly always)
        self._last: GuestRegion | None = self._regions[0] if self._regions else None
        self._iovecs: dict[tuple[tuple[int, ...], tuple[int, ...]], _Iovec] = {}

    @classmethod
    def anonymous(cls, ranges: Sequence[tuple[int, int]], *, shared: bool = False) -> GuestMemory:
        """Build guest memory from ``(guest_addr, size)`` ranges with anonymous mappings."""
        return cls(
            GuestRegion(addr, size, map_anonymous(size, shared=shared), shared=shared)
            for addr, size in ranges
        )

    @property
    def regions(self) -> tuple[GuestRegion, ...]:
        return tuple(self._regions)

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self._regions)

    @property
    def last_addr(self) -> int:
        """One past the highest guest RAM address."""
        return self._regions[-1].end if self._regions else 0

    def close(self) -> None:
        self._iovecs.clear()
        for r in self._regions:
            r.release()

    # -- lookup -------------------------------------------------------------------------------

    def find_region(self, addr: int) -> GuestRegion | None:
        r = self._last
        if r is not None and r.guest_addr <= addr < r.end:
            return r
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            r = self._regions[i]
            if addr < r.end:
                self._last = r
                return r
        return None

    def _locate(self, addr: int, length: int) -> tuple[GuestRegion, int]:
        """The region holding all of ``[addr, addr+length)`` and the offset into it."""
        if addr < 0 or length < 0:
            raise GuestMemoryError(addr, length, "has a negative address or length")
        r = self.find_region(addr)
        if r is None or addr + length > r.end:
            raise GuestMemoryError(addr, length)
        return r, addr - r.guest_addr

    def check_range(self, addr: int, length: int) -> bool:
        """True when every byte of ``[addr, addr+length)`` is guest RAM (regions may be adjacent).

        Allocates nothing: the virtqueue calls it for every buffer of every request.
        """
        if length < 0:
            return False
        r = self.find_region(addr)  # None for a negative address too
        if r is None:
            return False
        end = addr + length
        while end > r.end:  # runs on into the next region only when it starts right here
            r = self.find_region(r.end)
            if r is None:
                return False
        return True

    def check_ranges(self, addrs: Sequence[int], lens: Sequence[int]) -> bool:
        """True when every byte of every range ``[addrs[i], addrs[i]+lens[i])`` is guest RAM."""
        if self._one_region(addrs, lens) is not None:
            return True
        return all(map(self.check_range, addrs, lens))

    def _one_region(self, addrs: Sequence[int], lens: Sequence[int]) -> GuestRegion | None:
        """The region holding every range, when one does (a request's pages nearly always lie
        in one region): the lowest start lies in region r, and every end is at most the highest
        start plus the longest length, which r holds too. C-level passes, not a lookup per range."""
        if not addrs or min(lens) < 0:
            return None
        r = self.find_region(min(addrs))
        if r is not None and max(addrs) + max(lens) <= r.end:
            return r
        if r is not None and max(map(add, addrs, lens)) <= r.end:
            return r  # the exact bound, for ranges the quick one cannot place
        return None

    # -- bulk access ------------------------------------------------------------------------------

    def view(self, addr: int, length: int) -> memoryview:
        """A writable view of a range inside one region (zero-copy; for preadv/pwritev)."""
        r, off = self._locate(addr, length)
        return memoryview(r.mapping)[off : off + length]

    def slices(self, addr: int, length: int) -> list[memoryview]:
        """Views covering a range that may span adjacent regions; raises on any hole."""
        return [memoryview(r.mapping)[off : off + n] for r, off, n in self._pieces(addr, length)]

    def _pieces(self, addr: int, length: int) -> list[tuple[GuestRegion, int, int]]:
        """``(region, offset in it, bytes)`` for each region ``[addr, addr+length)`` touches, in
        order. Raises ``GuestMemoryError`` on a negative value or any byte outside RAM, before
        the caller touches anything."""
        if addr < 0 or length < 0:
            raise GuestMemoryError(addr, length, "has a negative address or length")
        out: list[tuple[GuestRegion, int, int]] = []
        cur, left = addr, length
        while left > 0:
            r = self.find_region(cur)
            if r is None:
                raise GuestMemoryError(addr, length)
            n = min(left, r.end - cur)
            out.append((r, cur - r.guest_addr, n))
            cur += n
            left -= n
        return out

    def read(self, addr: int, length: int) -> bytes:
        r = self.find_region(addr)
        if r is not None and addr + length <= r.end and length >= 0:
            off = addr - r.guest_addr
            return r.mapping[off : off + length]
        return b"".join(bytes(v) for v in self.slices(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        r = self.find_region(addr)
        if r is not None and addr + length <= r.end:
            off = addr - r.guest_addr
            r.mapping[off : off + length] = data
            return
        pos = 0
        src = memoryview(data).cast("B")
        for v in self.slices(addr, length):
            v[:] = src[pos : pos + len(v)]
            pos += len(v)

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        for v in self.slices(addr, length):
            v[:] = bytes([byte]) * len(v)

    # -- typed access ---------------------------------------------------------------------------

    def read_struct(self, addr: int, fmt: struct.Struct) -> tuple:
        r = self.find_region(addr)
        if r is not None and addr + fmt.size <= r.end:
            return fmt.unpack_from(r.mapping, addr - r.guest_addr)
        return fmt.unpack(self.read(addr, fmt.size))  # spans adjacent regions, or raises

    def write_struct(self, addr: int, fmt: struct.Struct, *values: object) -> None:
        r = self.find_region(addr)
        if r is not None and addr + fmt.size <= r.end:
            fmt.pack_into(r.mapping, addr - r.guest_addr, *values)
            return
        self.write(addr, fmt.pack(*values))  # spans adjacent regions, or raises

    def read_u8(self, addr: int) -> int:
        return self.read_struct(addr, _U8)[0]

    def read_u16(self, addr: int) -> int:
        return self.read_struct(addr, _U16)[0]

    def read_u32(self, addr: int) -> int:
        return self.read_struct(addr, _U32)[0]

    def read_u64(self, addr: int) -> int:
        return self.read_struct(addr, _U64)[0]

    def write_u8(self, addr: int, value: int) -> None:
        self.write_struct(addr, _U8, value)

    def write_u16(self, addr: int, value: int) -> None:
        self.write_struct(addr, _U16, value)

    def write_u32(self, addr: int, value: int) -> None:
        self.write_struct(addr, _U32, value)

    def write_u64(self, addr: int, value: int) -> None:
        self.write_struct(addr, _U64, value)

    def discard(self, addr: int, length: int) -> int:
        """Give the whole pages inside ``[addr, addr+length)`` back to the host (balloon, free
        page reporting); returns the bytes released.

        MADV_DONTNEED on private anonymous RAM (the next guest touch reads a zero page),
        MADV_REMOVE on shared or file-backed RAM (frees the backing store too). Raises
        ``GuestMemoryError`` when any of those pages is not RAM (then nothing is released) and
        OSError when the kernel refuses (hugepage-backed RAM).
        """
        start = -(-addr // PAGE) * PAGE
        end = (addr + length) // PAGE * PAGE
        if end <= start:
            return 0
        done = 0
        for r, off, n in self._pieces(start, end - start):  # raises before any release
            advice = MADV_REMOVE if r.shared or r.file_backed else mmap.MADV_DONTNEED
            try:
                r.mapping.madvise(advice, off, n)
            except ValueError as e:  # mmap's own argument check
                raise OSError(errno.EINVAL, str(e)) from None
            done += n
        return done

    # -- host addresses for the kernel --------------------------------------------------------------

    def host_iovec(self, addrs: Sequence[int], lens: Sequence[int]) -> HostIovec:
        """The ranges ``[addrs[i], addrs[i]+lens[i])`` as a packed host ``struct iovec[]`` for
        preadv/pwritev, checked like any other access (``GuestMemoryError`` outside RAM).

        Why not a list of views: a memoryview per 4 KiB page costs more than the page's copy.
        A range that spans adjacent regions becomes one entry per region. The result pins every
        region it names, so the mappings cannot be unmapped while the kernel uses the addresses.

        Answers are remembered for the last ``IOVEC_CACHE`` inputs: the answer depends on the
        ranges alone (regions never move), and a reader that reuses one buffer (dd, O_DIRECT
        databases) asks the same question request after request.
        """
        key = (tuple(addrs), tuple(lens))
        known = self._iovecs.get(key)
        if known is None:
            known = self._iovecs[key] = self._host_iovec(addrs, lens)
            if len(self._iovecs) > IOVEC_CACHE:
                del self._iovecs[next(iter(self._iovecs))]  # the oldest
        data, count, total, regions = known
        return HostIovec(data, count, total, tuple(memoryview(r.mapping) for r in regions))

    def _host_iovec(
        self, addrs: Sequence[int], lens: Sequence[int]
    ) -> tuple[bytes, int, int, tuple[GuestRegion, ...]]:
        if not addrs:
            return b"", 0, 0, ()
        r = self._one_region(addrs, lens)
        if r is not None:  # one translation for all
            flat = array("Q", bytes(16 * len(addrs)))
            flat[0::2] = array("Q", map((r.host_addr - r.guest_addr).__add__, addrs))
            flat[1::2] = array("Q", lens)
            return flat.tobytes(), len(addrs), sum(lens), (r,)
        flat = array("Q")
        regions: dict[int, GuestRegion] = {}
        for addr, length in zip(addrs, lens, strict=True):
            for r, off, n in self._pieces(addr, length):
                flat.append(r.host_addr + off)
                flat.append(n)
                regions[id(r)] = r
        return flat.tobytes(), len(flat) // 2, sum(flat[1::2]), tuple(regions.values())


class HostIovec:
    """A packed ``struct iovec[count]`` (base u64, len u64) over checked guest RAM.

    ``pins`` are views of the regions it points into: while they live, closing a mapping raises
    BufferError instead of unmapping memory the kernel is about to read or write.
    """

    __slots__ = ("count", "data", "pins", "total")

    def __init__(self, data: bytes, count: int, total: int, pins: tuple[memoryview, ...]) -> None:
        self.data, self.count, self.total, self.pins = data, count, total, pins

    def aligned(self, align: int) -> bool:
        """Every buffer's host address and length is a multiple of ``align`` (for O_DIRECT)."""
        return not any(map((align - 1).__and__, memoryview(self.data).cast("Q")))
