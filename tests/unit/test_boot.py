"""Boot data as values: E820, zero page fields, initrd placement, command line, GDT and LINTs."""

from __future__ import annotations

import struct

import pytest

from engine.machine import bootparams as bp
from engine.machine import layout, regs
from engine.machine.loader import LoadResult
from engine.machine.memory import GuestMemory

GiB, MiB = 1 << 30, 1 << 20
ELF = LoadResult(entry=0x1000000, kernel_start=0x1000000, kernel_end=0x3E00000, image_format="elf")


def test_e820_reserves_system_area_and_merges_adjacent_ram() -> None:
    ram = [(0, 128 * MiB), (128 * MiB, 128 * MiB)]  # two NUMA pieces, back to back
    e = bp.e820_map(ram)
    assert e == [
        bp.E820Entry(0, 0x9FC00, bp.E820_RAM),
        bp.E820Entry(0x9FC00, 0x100000 - 0x9FC00, bp.E820_RESERVED),
        bp.E820Entry(0x100000, 256 * MiB - 0x100000, bp.E820_RAM),
    ]


def test_e820_skips_the_mmio_hole() -> None:
    e = bp.e820_map([(0, 3 * GiB), (4 * GiB, 1 * GiB)])
    assert e[-1] == bp.E820Entry(4 * GiB, 1 * GiB, bp.E820_RAM)
    assert e[-2] == bp.E820Entry(0x100000, 3 * GiB - 0x100000, bp.E820_RAM)
    assert layout.RSDP_ADDR in range(e[1].addr, e[1].addr + e[1].size)


def test_initrd_goes_high_but_below_addr_max_and_the_hole() -> None:
    ram = [(0, 3 * GiB), (4 * GiB, 2 * GiB)]
    addr = bp.place_initrd(ram, 10 * MiB + 5, kernel_end=0x3E00000, addr_max=0x7FFFFFFF)
    assert addr % 4096 == 0 and addr + 10 * MiB + 5 <= 0x80000000
    assert addr > 0x80000000 - 11 * MiB
    small = bp.place_initrd([(0, 256 * MiB)], 4 * MiB, kernel_end=0x3E00000, addr_max=0x7FFFFFFF)
    assert small == 256 * MiB - 4 * MiB


def test_initrd_that_does_not_fit() -> None:
    with pytest.raises(bp.BootConfigError, match="does not fit") as info:
        bp.place_initrd([(0, 64 * MiB)], 8 * MiB, kernel_end=60 * MiB, addr_max=0x7FFFFFFF)
    assert "more memory" in info.value.hint


def test_zero_page_fields() -> None:
    hdr = bytes(i & 0xFF for i in range(0x1F1, 0x26C))  # a recognisable fake setup header
    kern = LoadResult(0x1000000, 0x1000000, 0x3E00000, "bzimage", "lz4", setup_header=hdr)
    e820 = bp.e820_map([(0, 256 * MiB)])
    zp = bp.build_zero_page(
        kern,
        e820,
        cmdline_addr=0x20000,
        cmdline_len=12,
        initrd=bp.Initrd(0x5000000, 0x1234),
        rsdp_addr=0xE0000,
    )
    assert len(zp) == 4096
    assert struct.unpack_from("<Q", zp, 0x70)[0] == 0xE0000
    assert zp[0x1E8] == 3
    assert zp[0x210] == 0xFF and zp[0x211] & 1
    assert struct.unpack_from("<II", zp, 0x218) == (0x5000000, 0x1234)
    assert struct.unpack_from("<I", zp, 0x228)[0] == 0x20000
    assert struct.unpack_from("<QQI", zp, 0x2D0 + 20) == (0x9FC00, 0x100000 - 0x9FC00, 2)
    assert zp[0x1F1:0x210] == hdr[: 0x210 - 0x1F1]  # header copied from the bzImage


def test_zero_page_for_bare_elf_has_a_minimal_header() -> None:
    zp = bp.build_zero_page(ELF, bp.e820_map([(0, 64 * MiB)]), cmdline_addr=0x20000, cmdline_len=0)
    assert struct.unpack_from("<H2xIH", zp, 0x1FE) == (0xAA55, 0x53726448, 0x20C)


def test_cmdline_limits() -> None:
    m = GuestMemory.anonymous([(0, 1 * MiB)])
    assert bp.write_cmdline(m, "console=ttyS0", max_len=2047) == 13
    assert m.read(layout.CMDLINE_START, 14) == b"console=ttyS0\0"
    with pytest.raises(bp.BootConfigError, match="300 bytes, the limit is 255") as info:
        bp.write_cmdline(m, "x" * 300, max_len=255)
    assert "shorten" in info.value.hint


def test_gdt_matches_firecracker_vectors() -> None:
    assert regs.gdt_entry(0xA09B, 0, 0xFFFFF) == 0x00AF9B000000FFFF
    assert regs.gdt_entry(0xC093, 0, 0xFFFFF) == 0x00CF93000000FFFF
    assert regs.gdt_entry(0x808B, 0, 0xFFFFF) == 0x008F8B000000FFFF
    code = regs.segment_from_gdt(regs.BOOT_GDT[2], 2)
    assert code["selector"] == 0x10 and code["l"] == 1 and code["limit"] == 0xFFFFFFFF
    data = regs.segment_from_gdt(regs.BOOT_GDT[3], 3)
    assert data["selector"] == 0x18 and data["db"] == 1 and data["type"] == 3


def test_boot_page_tables_identity_map_1gib() -> None:
    m = GuestMemory.anonymous([(0, 1 * MiB)])
    regs.write_boot_tables(m)
    assert m.read_u64(layout.PML4_START) == layout.PDPTE_START | 3
    assert m.read_u64(layout.PDE_START + 8 * 511) == (511 << 21) | 0x83


def test_lint_modes_keep_other_bits() -> None:
    lapic = bytearray(1024)
    struct.pack_into("<I", lapic, 0x350, 0x10000)  # masked
    regs.set_lint_modes(lapic)
    assert struct.unpack_from("<I", lapic, 0x350)[0] == 0x10700
    assert struct.unpack_from("<I", lapic, 0x360)[0] == 0x400
