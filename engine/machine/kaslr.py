"""Host-side KASLR: the placement the bzImage decompressor would choose, made by the engine.

The engine loads a bzImage's ELF itself (``loader``), so the kernel's decompressor, which is
where x86 KASLR happens (arch/x86/boot/compressed/kaslr.c and misc.c), never runs. This module
does its two jobs on the host, with the host's randomness (docs/boot.md):

- a random physical slot: ``kernel_alignment``-aligned, at least ``min(linked address, 512 MiB)``,
  ``max(init_size, image extent)`` bytes inside one RAM region, clear of the initrd, and (unlike
  the decompressor, which builds its own page tables) inside the first GiB that the engine's boot
  page tables identity-map;
- a random virtual offset: a slot of the same alignment in [linked address, KERNEL_IMAGE_SIZE),
  applied with the relocation table the kernel build appends to the ELF (``vmlinux.relocs``,
  what misc.c ``handle_relocations`` walks backwards from the end of the decompressed payload).

Then ``KASLR_FLAG`` in the zero page's ``loadflags`` tells the kernel it was randomized, so it also
randomizes its direct map, vmalloc and vmemmap bases (arch/x86/mm/kaslr.c). ``nokaslr`` on the
command line keeps the linked addresses and the flag clear, as the decompressor does. The host is
x86 (KVM), little-endian like the kernel: the table and the fields are read in native order.
"""

from __future__ import annotations

import array
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.errors import EngineError

#: x86_64 constants (arch/x86/include/asm/page_64_types.h): the kernel text mapping's base and,
#: with CONFIG_RANDOMIZE_BASE (the only kernels with a relocation table), its size.
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
KERNEL_IMAGE_SIZE = 1 << 30
#: The x86_64 kernel's own minimum alignment (a 2 MiB page; head64.c refuses less).
MIN_KERNEL_ALIGN = 2 << 20
#: ``loadflags`` bit 1 (Documentation/arch/x86/boot.rst): set by the loader that randomized.
KASLR_FLAG = 0x02
#: The decompressor never places the kernel below the smaller of its linked address and this.
LOW_LIMIT = 512 << 20
#: The engine's boot page tables identity-map [0, 1 GiB) (``regs.write_boot_tables``); the
#: kernel's 64-bit entry runs there until it builds its own tables.
IDENTITY_MAPPED = 1 << 30


class RelocError(EngineError):
    """The relocation table after the kernel's ELF is malformed."""


class RandomBelow(Protocol):
    def randbelow(self, n: int, /) -> int: ...


class _SystemRandom:
    """The host's CSPRNG (``secrets``), as the decompressor uses RDRAND/RDTSC."""

    def randbelow(self, n: int, /) -> int:
        return secrets.randbelow(n)


SYSTEM_RANDOM: RandomBelow = _SystemRandom()


def nokaslr(cmdline: str) -> bool:
    """True when ``nokaslr`` is a word of the command line (the decompressor's
    ``cmdline_find_option_bool``: whole words separated by spaces, anywhere on the line)."""
    return "nokaslr" in cmdline.split()


@dataclass(frozen=True, slots=True)
class RelocTable:
    """The three groups of ``vmlinux.relocs``: kernel virtual addresses (low 32 bits) of the
    64-bit fields, of the inverse 32-bit fields (older kernels only) and of the 32-bit fields
    that hold kernel addresses."""

    r64: array.array[int]
    inv32: array.array[int]
    r32: array.array[int]

    def __len__(self) -> int:
        return len(self.r64) + len(self.inv32) + len(self.r32)


def parse_relocs(tail: bytes | memoryview, *, name: str = "kernel") -> RelocTable | None:
    """The table in ``tail`` (the bytes after the ELF's last byte), None if ``tail`` is empty.

    Layout (arch/x86/tools/relocs.c ``emit_relocs``): ``0, r64..., 0, inv32..., 0, r32...`` as
    little-endian u32; kernels since the per-CPU rework drop the inverse group (two zeros). No
    entry is 0: each is the low half of an address in the kernel map (>= 0x80000000).
    """
    if len(tail) == 0:
        return None
    if len(tail) % 4:
        raise RelocError(
            f"{name}: {len(tail)} bytes follow the ELF, not a relocation table (a u32 list)",
            hint="boot with nokaslr on the command line, or use the kernel's bzImage",
        )
    words = array.array("I")
    words.frombytes(bytes(tail))
    zeros: list[int] = []
    with contextlib.suppress(ValueError):  # array.index: the scan runs in C (200k words)
        while len(zeros) < 4:
            zeros.append(words.index(0, zeros[-1] + 1 if zeros else 0))
    if not zeros or zeros[0] != 0 or len(zeros) not in (2, 3):
        raise RelocError(
            f"{name}: the {len(tail)} bytes after the ELF are not a relocation table "
            f"({len(zeros)} zero terminators, {'' if zeros and zeros[0] == 0 else 'not '}"
            "starting with one)",
            hint="boot with nokaslr on the command line, or use the kernel's bzImage",
        )
    empty = array.array("I")
    if len(zeros) == 3:
        return RelocTable(
            words[1 : zeros[1]], words[zeros[1] + 1 : zeros[2]], words[zeros[2] + 1 :]
        )
    return RelocTable(words[1 : zeros[1]], empty, words[zeros[1] + 1 :])


def apply_relocs(
    image: memoryview,
    table: RelocTable,
    *,
    linked_base: int,
    limit: int,
    delta: int,
    name: str = "kernel",
) -> None:
    """Add ``delta`` to every field the table names in ``image`` (the kernel as loaded, whose
    byte 0 was linked at physical ``linked_base``); fields lie in ``[0, limit)``.

    As misc.c: 64-bit fields ``+= delta``, 32-bit fields ``+= delta``, inverse 32-bit fields
    ``-= delta``, each location sign-extended from its u32 and mapped through the kernel map.
    """
    if delta == 0:
        return
    # u32 w -> virtual w + 2**64 - 2**32 (sign-extended) -> physical - START_KERNEL_MAP -> offset
    to_offset = (1 << 64) - (1 << 32) - START_KERNEL_MAP - linked_base
    _patch(image, table.r64, to_offset, delta, limit, name, wide=True)
    _patch(image, table.inv32, to_offset, -delta, limit, name, wide=False)
    _patch(image, table.r32, to_offset, delta, limit, name, wide=False)


def _patch(
    image: memoryview,
    words: array.array[int],
    to_offset: int,
    add: int,
    limit: int,
    name: str,
    *,
    wide: bool,
) -> None:
    """``field += add`` (mod 2**64 or 2**32) at each ``word + to_offset``, checked in bounds.

    Fields go through typed views of the image, one per byte phase (``views[at % size]``, index
    ``at // size``): no ``struct`` call per field, which matters under the rig's TCG for ~200,000
    fields (docs/performance.md).
    """
    size = 8 if wide else 4
    mask = (1 << (8 * size)) - 1
    views = [
        image[k : k + (len(image) - k) // size * size].cast("Q" if wide else "I")
        for k in range(size)
    ]
    for w in words:
        at = w + to_offset
        if not 0 <= at <= limit - size:
            raise RelocError(
                f"{name}: relocation at kernel address {w | 0xFFFF_FFFF_0000_0000:#x} lies "
                f"outside the loaded image (offset {at:#x}, image {limit:#x} bytes)",
                hint="boot with nokaslr on the command line",
            )
        view, i = views[at % size], at // size
        view[i] = (view[i] + add) & mask


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the kernel goes: ``phys_delta`` from its linked physical address and ``virt_delta``
    from its linked virtual one; ``randomized`` sets KASLR_FLAG; ``why`` says what was done."""

    phys_delta: int = 0
    virt_delta: int = 0
    randomized: bool = False
    why: str = "linked addresses"


#: No randomization: the ELF's linked addresses.
LINKED = Placement()


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


def free_ranges(
    ram: Sequence[tuple[int, int]], avoid: Sequence[tuple[int, int]], *, low: int, high: int
) -> list[tuple[int, int]]:
    """``[start, end)`` pieces of each RAM range within ``[low, high)`` minus ``avoid``."""
    out = []
    for start, size in sorted(ram):
        pieces = [(max(start, low), min(start + size, high))]
        for a_start, a_size in avoid:
            a_end = a_start + a_size
            pieces = [
                part
                for lo, hi in pieces
                for part in ((lo, min(hi, a_start)), (max(lo, a_end), hi))
                if part[0] < part[1]
            ]
        out += [(lo, hi) for lo, hi in pieces if lo < hi]
    return out


def physical_slots(
    ranges: Sequence[tuple[int, int]], size: int, align: int
) -> list[tuple[int, int]]:
    """``(first slot address, slot count)`` per range: aligned starts where ``size`` bytes fit."""
    out = []
    for lo, hi in ranges:
        first = _align_up(lo, align)
        if first + size <= hi:
            out.append((first, (hi - first - size) // align + 1))
    return out


def choose(
    *,
    linked_base: int,
    size: int,
    align: int,
    ram: Sequence[tuple[int, int]],
    avoid: Sequence[tuple[int, int]] = (),
    relocatable: bool,
    table: RelocTable | None,
    cmdline: str,
    rng: RandomBelow = SYSTEM_RANDOM,
) -> Placement:
    """The decompressor's choice (kaslr.c ``choose_random_location``) for this kernel and VM."""
    if nokaslr(cmdline):
        return Placement(why="nokaslr on the command line")
    if not relocatable:
        return Placement(why="the kernel is not relocatable (setup header)")
    if table is None:
        return Placement(why="no relocation table (a plain ELF, or built without RANDOMIZE_BASE)")
    align = max(align, MIN_KERNEL_ALIGN)
    size = _align_up(size, align)
    low = _align_up(min(linked_base, LOW_LIMIT), align)
    slots = physical_slots(free_ranges(ram, avoid, low=low, high=IDENTITY_MAPPED), size, align)
    total = sum(n for _, n in slots)
    phys = linked_base
    if total:
        pick = rng.randbelow(total)
        for first, n in slots:
            if pick < n:
                phys = first + pick * align
                break
            pick -= n
    virt_slots = (KERNEL_IMAGE_SIZE - linked_base - size) // align + 1
    virt = linked_base + rng.randbelow(virt_slots) * align if virt_slots > 0 else linked_base
    why = "physical and virtual" if total else "virtual only (no free physical slot)"
    return Placement(phys - linked_base, virt - linked_base, True, why)
