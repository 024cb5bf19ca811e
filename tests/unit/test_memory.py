"""GuestMemory: every access is bounds-checked; ranges may span adjacent regions, never holes."""

from __future__ import annotations

import struct

import pytest

from engine.machine.memory import GuestMemory
from launcher.errors import GuestMemoryError

PAGE = 4096


@pytest.fixture
def mem():
    # Two adjacent regions, then a hole, then a third region.
    m = GuestMemory.anonymous([(0, PAGE), (PAGE, PAGE), (16 * PAGE, PAGE)])
    yield m
    m.close()


def test_read_write_across_adjacent_regions(mem: GuestMemory) -> None:
    mem.write(PAGE - 3, b"abcdef")
    assert mem.read(PAGE - 3, 6) == b"abcdef"
    assert [len(v) for v in mem.slices(PAGE - 3, 6)] == [3, 3]


@pytest.mark.parametrize(
    ("addr", "length"),
    [
        (2 * PAGE - 2, 4),  # runs into the hole
        (3 * PAGE, 1),  # inside the hole
        (17 * PAGE - 1, 2),  # past the last region
        (-1, 1),  # negative address
        (0, -1),  # negative length
        (1 << 64, 1),  # beyond any u64 guest address
    ],
)
def test_out_of_bounds_accesses_raise(mem: GuestMemory, addr: int, length: int) -> None:
    assert not mem.check_range(addr, length)
    with pytest.raises(GuestMemoryError):
        mem.read(addr, length)
    if length > 0:
        with pytest.raises(GuestMemoryError):
            mem.write(addr, b"x" * length)


def test_failed_write_touches_nothing(mem: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        mem.write(2 * PAGE - 2, b"zzzz")
    assert mem.read(2 * PAGE - 2, 2) == b"\0\0"


def test_typed_accessors_are_little_endian_and_checked(mem: GuestMemory) -> None:
    mem.write_u64(16 * PAGE, 0x1122334455667788)
    assert mem.read(16 * PAGE, 2) == b"\x88\x77"
    assert mem.read_u16(16 * PAGE) == 0x7788
    assert mem.read_struct(16 * PAGE, struct.Struct("<II")) == (0x55667788, 0x11223344)
    with pytest.raises(GuestMemoryError):
        mem.read_u64(17 * PAGE - 4)


def test_view_is_zero_copy_and_single_region(mem: GuestMemory) -> None:
    v = mem.view(16 * PAGE + 8, 8)
    v[:] = b"12345678"
    assert mem.read(16 * PAGE + 8, 8) == b"12345678"
    v.release()
    with pytest.raises(GuestMemoryError):
        mem.view(PAGE - 1, 2)  # spans two regions: use slices()


def test_overlapping_regions_are_rejected() -> None:
    with pytest.raises(ValueError, match="overlap"):
        GuestMemory.anonymous([(0, 2 * PAGE), (PAGE, PAGE)])


def test_host_address_is_stable(mem: GuestMemory) -> None:
    r = mem.regions[0]
    assert r.host_addr == r.host_addr != 0


def test_host_iovec_translates_checked_ranges_and_pins_their_regions(mem: GuestMemory) -> None:
    """The host addresses handed to preadv/pwritev come from GuestMemory, checked like any
    access: one entry per region a range touches, none for a hole."""
    iov = mem.host_iovec([16 * PAGE + 8, PAGE - 4], [8, 8])
    base0, base1 = mem.regions[0].host_addr, mem.regions[1].host_addr
    base2 = mem.regions[2].host_addr
    entries = list(struct.iter_unpack("<QQ", iov.data))
    assert entries == [(base2 + 8, 8), (base0 + PAGE - 4, 4), (base1, 4)]
    assert (iov.count, iov.total, len(iov.pins)) == (3, 16, 3)
    again = mem.host_iovec([16 * PAGE + 8, PAGE - 4], [8, 8])  # answered from its cache
    assert again.data == iov.data and len(again.pins) == 3
    for addrs, lens in (([2 * PAGE - 2], [4]), ([3 * PAGE], [1]), ([-1], [1]), ([0], [-1])):
        with pytest.raises(GuestMemoryError):
            mem.host_iovec(addrs, lens)


def test_check_ranges_needs_every_byte_in_ram(mem: GuestMemory) -> None:
    assert mem.check_ranges([0, PAGE - 1, 16 * PAGE], [PAGE, 2, PAGE])
    assert not mem.check_ranges([0, 2 * PAGE - 1], [1, 2])  # runs into the hole
    assert not mem.check_ranges([16 * PAGE], [PAGE + 1])  # past the end of RAM
    assert not mem.check_ranges([(1 << 64) - 1], [2])
    assert not mem.check_ranges([0], [-1])
    assert mem.check_ranges([], [])


def test_a_pinned_region_is_unmapped_only_when_its_pin_dies() -> None:
    m = GuestMemory.anonymous([(0, PAGE)])
    iov = m.host_iovec([0], [16])
    m.close()  # the mapping stays while the kernel may still use the iovec
    assert iov.pins[0][:4] == b"\0\0\0\0"
    del iov


def test_discard_releases_whole_pages_in_ram_only(mem: GuestMemory) -> None:
    mem.fill(0, 2 * PAGE, 0x5A)
    assert mem.discard(1, 2 * PAGE - 1) == PAGE  # only the second page is whole
    assert mem.read(0, 1) == b"\x5a" and mem.read(PAGE, 4) == bytes(4)
    mem.fill(0, PAGE, 0x5A)
    with pytest.raises(GuestMemoryError):
        mem.discard(0, 3 * PAGE)  # runs into the hole: nothing is released
    assert mem.read(0, 1) == b"\x5a"
