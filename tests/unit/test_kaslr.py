"""Host-side KASLR (engine/machine/kaslr.py, docs/boot.md): the placement the bzImage decompressor
would choose, and the kernel's own relocation table applied at a random virtual offset.

Most checks use Debian's real cloud kernel from build/guest/ (``make guest``) without KVM: its
bzImage is loaded into plain guest memory twice, at the linked addresses and randomized, and the
two images must differ exactly where the kernel's relocation table says, by the virtual offset.
The table is read here independently (arch/x86/boot/compressed/misc.c's format) as the oracle.
"""

from __future__ import annotations

import array
import struct

import pytest
from rigutil import guest_file
from tiny_guest import elf_image

from engine.machine import bootparams as bp
from engine.machine import kaslr
from engine.machine.kaslr import RelocError
from engine.machine.loader import LoaderError, load_kernel, open_kernel
from engine.machine.memory import GuestMemory

MiB = 1 << 20
RAM = 768 * MiB
LINKED_TEXT = 0xFFFF_FFFF_8100_0000  # x86_64 __START_KERNEL_map + 16 MiB


class Fixed:
    """A random source that answers a fixed fraction of its range (0 = lowest, 1 = highest)."""

    def __init__(self, *fractions: float) -> None:
        self.fractions = list(fractions)

    def randbelow(self, n: int) -> int:
        return min(n - 1, int(self.fractions.pop(0) * n))


@pytest.fixture(scope="module")
def vmlinuz() -> bytes:
    return guest_file("vmlinuz").read_bytes()


@pytest.fixture(scope="module")
def oracle_table() -> dict[str, array.array]:
    """The relocation groups of build/guest/vmlinux (the decompressed payload), split by hand:
    the words after the section header table, ``0, r64.., 0, inv32.., 0, r32..``."""
    data = guest_file("vmlinux").read_bytes()
    (e_shoff,) = struct.unpack_from("<Q", data, 40)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 58)
    words = array.array("I", data[e_shoff + e_shentsize * e_shnum :])
    assert words[0] == 0
    z1 = words.index(0, 1)
    z2 = words.index(0, z1 + 1)
    return {"r64": words[1:z1], "inv32": words[z1 + 1 : z2], "r32": words[z2 + 1 :]}


def load(image: bytes, cmdline: str, rng: kaslr.RandomBelow, avoid=()) -> tuple:
    mem = GuestMemory.anonymous([(0, RAM)])
    res = load_kernel(mem, image, cmdline=cmdline, avoid=avoid, rng=rng)
    return mem, res


def test_the_debian_kernel_carries_its_relocation_table_after_the_elf(vmlinuz, oracle_table):
    table = open_kernel(vmlinuz).relocs()
    assert table is not None
    assert list(table.r64) == list(oracle_table["r64"])
    assert list(table.inv32) == list(oracle_table["inv32"])
    assert list(table.r32) == list(oracle_table["r32"])
    assert len(table) > 100_000  # every absolute kernel address in text and data
    with open(guest_file("vmlinux"), "rb") as f:  # the ELF, read from its file descriptor
        from_elf = open_kernel(f).relocs()
    assert from_elf is not None and list(from_elf.r64) == list(table.r64)


def test_relocation_changes_exactly_the_listed_fields_by_the_virtual_offset(vmlinuz, oracle_table):
    linked_mem, linked = load(vmlinuz, "nokaslr", kaslr.SYSTEM_RANDOM)
    mem, res = load(vmlinuz, "console=ttyS0", Fixed(0.5, 0.25))
    p = res.placement
    assert p.randomized and p.phys_delta > 0 and p.virt_delta > 0
    size = linked.kernel_end - linked.kernel_start
    expect = bytearray(linked_mem.read(linked.kernel_start, size))
    # The oracle: misc.c handle_relocations, from the kernel source's description.
    for key, fmt, sign in (("r64", "<Q", 1), ("inv32", "<I", -1), ("r32", "<I", 1)):
        mask = (1 << (8 * struct.calcsize(fmt))) - 1
        for w in oracle_table[key]:
            at = w - 0x8000_0000 - linked.kernel_start  # kernel map address -> image offset
            (v,) = struct.unpack_from(fmt, expect, at)
            struct.pack_into(fmt, expect, at, (v + sign * p.virt_delta) & mask)
    got = mem.read(res.kernel_start, size)
    assert got == bytes(expect)
    assert res.kernel_start == linked.kernel_start + p.phys_delta
    assert res.entry == linked.entry + p.phys_delta
    assert mem.read(linked.kernel_start, 4096) != got[:4096]  # nothing left at the linked place


def test_two_boots_get_different_places(vmlinuz):
    kernel = open_kernel(vmlinuz)
    seen = {
        (p.phys_delta, p.virt_delta)
        for p in (kernel.placement([(0, RAM)], cmdline="quiet") for _ in range(4))
    }
    assert len(seen) > 1  # four equal draws from ~300 x ~480 slots: not in this universe


def test_placement_stays_inside_what_the_header_ram_and_initrd_allow(vmlinuz):
    kernel = open_kernel(vmlinuz)
    assert kernel.header is not None and kernel.header.relocatable
    align = kernel.header.kernel_alignment
    size = max(kernel.header.init_size, kernel.linked_end - kernel.linked_start)
    initrd = (RAM - 40 * MiB, 30 * MiB)
    for frac in (0.0, 0.5, 0.999999):
        p = kernel.placement([(0, RAM)], avoid=[initrd], cmdline="", rng=Fixed(frac, frac))
        phys = kernel.linked_start + p.phys_delta
        virt = kernel.linked_start + p.virt_delta
        assert phys % align == 0 and virt % align == 0
        assert phys >= kernel.linked_start  # min(linked address, 512 MiB)
        assert phys + size <= min(RAM, kaslr.IDENTITY_MAPPED)
        assert phys + size <= initrd[0] or phys >= initrd[0] + initrd[1]
        assert virt + size <= kaslr.KERNEL_IMAGE_SIZE
    lowest = kernel.placement([(0, RAM)], cmdline="", rng=Fixed(0.0, 0.0))
    assert (lowest.phys_delta, lowest.virt_delta) == (0, 0)
    top = kernel.placement([(0, RAM)], avoid=[initrd], cmdline="", rng=Fixed(0.999999, 0))
    assert kernel.linked_start + top.phys_delta + size > initrd[0] - align  # the last slot


def test_nokaslr_keeps_the_linked_addresses_and_the_zero_page_flag_clear(vmlinuz):
    _, res = load(vmlinuz, "console=ttyS0 nokaslr quiet", kaslr.SYSTEM_RANDOM)
    assert not res.placement.randomized and res.placement.why == "nokaslr on the command line"
    assert (res.entry, res.kernel_start) == (0x100_0000, 0x100_0000)
    e820 = bp.e820_map([(0, RAM)])
    zp = bp.build_zero_page(res, e820, cmdline_addr=0x20000, cmdline_len=10)
    assert zp[0x211] & kaslr.KASLR_FLAG == 0
    _, rnd = load(vmlinuz, "console=ttyS0", kaslr.SYSTEM_RANDOM)
    zp = bp.build_zero_page(rnd, e820, cmdline_addr=0x20000, cmdline_len=10)
    assert zp[0x211] & kaslr.KASLR_FLAG and zp[0x211] & 1  # KASLR_FLAG and LOADED_HIGH


@pytest.mark.parametrize(
    ("cmdline", "off"),
    [("nokaslr", True), ("a nokaslr b", True), ("nokaslrx", False), ("kaslr", False)],
)
def test_nokaslr_is_a_whole_word(cmdline: str, off: bool):
    assert kaslr.nokaslr(cmdline) is off


# -- synthetic kernels: the format and its errors ------------------------------------------------

BASE = 0x20_0000  # a 2 MiB-aligned "linked address" for a tiny kernel


def tiny_kernel(table: bytes) -> bytes:
    """An ELF at 2 MiB with a 64-bit, a 32-bit and an inverse 32-bit field, and ``table`` after
    it; fields hold their own kernel-map address (low half for the 32-bit ones)."""
    code = bytearray(64)
    struct.pack_into("<Q", code, 8, kaslr.START_KERNEL_MAP + BASE + 8)
    struct.pack_into("<I", code, 20, (BASE + 20 + 0x8000_0000) & 0xFFFF_FFFF)
    struct.pack_into("<I", code, 28, 0x1234_5678)
    return elf_image(bytes(code), entry=BASE) + table


def words(*ws: int) -> bytes:
    return struct.pack(f"<{len(ws)}I", *ws)


def addr(offset: int) -> int:
    return 0x8000_0000 + BASE + offset


def test_a_synthetic_table_with_and_without_the_inverse_group():
    delta = 6 * MiB
    for table, inverse in (
        (words(0, addr(8), 0, addr(28), 0, addr(20)), True),
        (words(0, addr(8), 0, addr(20)), False),
    ):
        mem = GuestMemory.anonymous([(0, 64 * MiB)])
        image = open_kernel(tiny_kernel(table))
        res = image.load(mem, kaslr.Placement(4 * MiB, delta, True, "test"))
        at = BASE + 4 * MiB
        assert mem.read_u64(at + 8) == kaslr.START_KERNEL_MAP + BASE + 8 + delta
        assert mem.read_u32(at + 20) == addr(20) + delta
        assert mem.read_u32(at + 28) == (0x1234_5678 - delta if inverse else 0x1234_5678)
        assert res.entry == BASE + 4 * MiB


def test_a_plain_elf_has_no_table_and_stays_where_it_was_linked():
    mem = GuestMemory.anonymous([(0, 64 * MiB)])
    res = load_kernel(mem, elf_image(b"\xf4" * 16))
    p = res.placement
    assert (p.randomized, p.phys_delta, p.virt_delta) == (False, 0, 0)
    assert "no relocation table" in p.why and res.entry == 0x10_0000


@pytest.mark.parametrize(
    ("tail", "match"),
    [
        (b"\0\0\0", "not a relocation table"),
        (words(7, addr(8), 0, addr(20)), "zero terminators"),
        (words(0, addr(8), 0, 0, 0, 0), "zero terminators"),
        (words(0, addr(4096), 0, addr(20)), "outside the loaded image"),
    ],
)
def test_a_bad_table_is_a_clear_error_that_nokaslr_avoids(tail: bytes, match: str):
    image = tiny_kernel(tail)
    with pytest.raises((RelocError, LoaderError), match=match) as info:
        load_kernel(GuestMemory.anonymous([(0, 64 * MiB)]), image, rng=Fixed(0.5, 0.5))
    assert "nokaslr" in info.value.hint
    res = load_kernel(GuestMemory.anonymous([(0, 64 * MiB)]), image, cmdline="nokaslr")
    assert res.entry == BASE
