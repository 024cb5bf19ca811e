"""The zero page (``struct boot_params``), E820 map, command line and initrd placement.

Pure where it can be: ``e820_map`` and ``build_zero_page`` turn values into values; only
``write_boot_params``/``write_cmdline``/``load_initrd`` touch guest memory (through
``GuestMemory``, bounds-checked). Offsets are from Documentation/arch/x86/zero-page.rst and
boot.rst; values follow Firecracker's ``configure_64bit_boot`` (docs/boot.md, "Boot data").
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import EngineError
from engine.machine import kaslr, layout
from engine.machine.loader import (  # setup-header fields: the same offsets in boot_params
    BOOT_FLAG,
    CMD_LINE_PTR,
    CMDLINE_SIZE,
    HDRS_MAGIC,
    HEADER,
    KERNEL_ALIGNMENT,
    LOADED_HIGH,
    LOADFLAGS,
    RAMDISK_IMAGE,
    SETUP_HEADER,
    TYPE_OF_LOADER,
    VERSION,
    LoadResult,
)
from engine.machine.memory import GuestMemory

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_MAX_ENTRIES = 128
ZERO_PAGE_SIZE = 4096

# boot_params offsets
ACPI_RSDP_ADDR = 0x070
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
E820_TABLE = 0x2D0


class BootConfigError(EngineError):
    """The command line or initrd does not fit what the kernel or guest RAM allows."""


@dataclass(frozen=True, slots=True)
class E820Entry:
    addr: int
    size: int
    type: int


def e820_map(ram: Sequence[tuple[int, int]]) -> list[E820Entry]:
    """RAM below the EBDA, the reserved system-data/BIOS area up to 1 MiB, then all RAM above.

    Adjacent RAM ranges (NUMA pieces) are merged so the kernel sees one entry per contiguous run.
    """
    out = [
        E820Entry(0, layout.EBDA_START, E820_RAM),
        E820Entry(layout.EBDA_START, layout.HIMEM_START - layout.EBDA_START, E820_RESERVED),
    ]
    for start, size in sorted(ram):
        lo = max(start, layout.HIMEM_START)
        end = start + size
        if end <= lo:
            continue
        last = out[-1]
        if last.type == E820_RAM and last.addr + last.size == lo:
            out[-1] = E820Entry(last.addr, end - last.addr, E820_RAM)
        else:
            out.append(E820Entry(lo, end - lo, E820_RAM))
    if len(out) > E820_MAX_ENTRIES:
        raise BootConfigError(f"{len(out)} E820 entries, the zero page holds {E820_MAX_ENTRIES}")
    return out


@dataclass(frozen=True, slots=True)
class Initrd:
    addr: int
    size: int


def place_initrd(
    ram: Sequence[tuple[int, int]], size: int, *, kernel_end: int, addr_max: int
) -> int:
    """The highest page-aligned address for ``size`` bytes: in RAM, above the kernel, ≤ addr_max."""
    limit = min(addr_max + 1, layout.MMIO32_START)
    for start, rsize in sorted(ram, reverse=True):
        top = min(start + rsize, limit)
        addr = (top - size) & ~(layout.PAGE_SIZE - 1)
        if addr >= max(start, kernel_end) and addr + size <= top:
            return addr
    raise BootConfigError(
        f"initrd of {size} bytes does not fit between the kernel end {kernel_end:#x} and "
        f"{limit:#x} (initrd_addr_max {addr_max:#x})",
        hint="give the VM more memory or use a smaller initrd",
    )


def build_zero_page(
    kernel: LoadResult,
    e820: Sequence[E820Entry],
    *,
    cmdline_addr: int,
    cmdline_len: int,
    initrd: Initrd | None = None,
    rsdp_addr: int = 0,
) -> bytes:
    """The 4 KiB ``boot_params``: the bzImage's setup header (or a minimal one) plus our fields."""
    zp = bytearray(ZERO_PAGE_SIZE)
    if kernel.setup_header is not None:
        hdr = kernel.setup_header[: ZERO_PAGE_SIZE - SETUP_HEADER]
        zp[SETUP_HEADER : SETUP_HEADER + len(hdr)] = hdr
    else:
        struct.pack_into("<H", zp, BOOT_FLAG, 0xAA55)
        struct.pack_into("<I", zp, HEADER, HDRS_MAGIC)
        struct.pack_into("<H", zp, VERSION, 0x020C)
        struct.pack_into("<I", zp, KERNEL_ALIGNMENT, 0x0100_0000)
    zp[TYPE_OF_LOADER] = 0xFF
    zp[LOADFLAGS] |= LOADED_HIGH
    if kernel.placement.randomized:  # the kernel then randomizes its memory regions too
        zp[LOADFLAGS] |= kaslr.KASLR_FLAG
    else:
        zp[LOADFLAGS] &= ~kaslr.KASLR_FLAG
    struct.pack_into("<I", zp, CMD_LINE_PTR, cmdline_addr & 0xFFFF_FFFF)
    struct.pack_into("<I", zp, EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    struct.pack_into("<I", zp, CMDLINE_SIZE, cmdline_len)
    if initrd is not None:
        struct.pack_into(
            "<II", zp, RAMDISK_IMAGE, initrd.addr & 0xFFFF_FFFF, initrd.size & 0xFFFF_FFFF
        )
        struct.pack_into("<I", zp, EXT_RAMDISK_IMAGE, initrd.addr >> 32)
        struct.pack_into("<I", zp, EXT_RAMDISK_SIZE, initrd.size >> 32)
    struct.pack_into("<Q", zp, ACPI_RSDP_ADDR, rsdp_addr)
    zp[E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        struct.pack_into("<QQI", zp, E820_TABLE + 20 * i, e.addr, e.size, e.type)
    return bytes(zp)


def write_cmdline(mem: GuestMemory, cmdline: str, *, max_len: int) -> int:
    """Write the NUL-terminated command line at CMDLINE_START; returns its length (no NUL)."""
    raw = cmdline.encode()
    limit = min(max_len, layout.CMDLINE_MAX_SIZE - 1)
    if len(raw) > limit:
        raise BootConfigError(
            f"kernel command line is {len(raw)} bytes, the limit is {limit}",
            hint="shorten boot.cmdline",
        )
    if b"\0" in raw:
        raise BootConfigError("kernel command line contains a NUL byte")
    mem.write(layout.CMDLINE_START, raw + b"\0")
    return len(raw)


def load_initrd(mem: GuestMemory, data: bytes, *, kernel_end: int, addr_max: int) -> Initrd:
    """Place the initrd (``place_initrd``) and copy it there.

    Placed before the kernel: ``kernel_end`` is the kernel's linked end, so its linked
    placement never overlaps, and a randomized one avoids the initrd (``kaslr.choose``).
    """
    ram = [(r.guest_addr, r.size) for r in mem.regions]
    addr = place_initrd(ram, len(data), kernel_end=kernel_end, addr_max=addr_max)
    mem.write(addr, data)
    return Initrd(addr, len(data))


def write_boot_params(mem: GuestMemory, zero_page: bytes) -> None:
    mem.write(layout.ZERO_PAGE_START, zero_page)
