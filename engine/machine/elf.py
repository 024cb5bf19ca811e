"""ELF64 kernel images: the program headers to load and where the file's ELF part ends.

Parsing only (``loader`` copies the segments): every offset and size is checked against the file,
and every segment against 1 MiB, before anything is read into guest memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.errors import EngineError
from engine.machine import layout

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
SHT_NOBITS = 8


class LoaderError(EngineError):
    """The kernel image is malformed or does not fit the guest."""


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    offset: int
    paddr: int
    filesz: int
    memsz: int
    align: int


def elf_layout(head: bytes | memoryview, file_size: int, *, name: str) -> tuple[int, list[Segment]]:
    """Entry point and PT_LOAD segments, every one checked against the file and 1 MiB.

    ``head`` holds at least the ELF header and the program header table.
    """
    if len(head) < 64 or head[:4] != ELF_MAGIC:
        raise LoaderError(f"{name}: not an ELF file")
    if head[4] != 2 or head[5] != 1:
        raise LoaderError(
            f"{name}: not a 64-bit little-endian ELF (class {head[4]}, data {head[5]})"
        )
    (e_machine,) = struct.unpack_from("<H", head, 18)
    if e_machine != 62:
        raise LoaderError(f"{name}: ELF machine {e_machine} is not x86_64 (62)")
    e_entry, e_phoff = struct.unpack_from("<QQ", head, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
    if e_entry < layout.HIMEM_START:
        raise LoaderError(f"{name}: entry point {e_entry:#x} is below 1 MiB")
    if e_phentsize < 56 or e_phoff + e_phnum * e_phentsize > min(len(head), file_size):
        raise LoaderError(f"{name}: program headers lie outside the file")
    segments = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
            "<IIQQQQQQ", head, e_phoff + i * e_phentsize
        )
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > file_size:
            raise LoaderError(f"{name}: segment {i} has bad sizes or lies outside the file")
        if p_paddr < layout.HIMEM_START:
            raise LoaderError(f"{name}: segment {i} loads at {p_paddr:#x}, below 1 MiB")
        segments.append(Segment(i, p_offset, p_paddr, p_filesz, p_memsz, p_align))
    if not segments:
        raise LoaderError(f"{name}: ELF has no loadable segment")
    return e_entry, segments


def section_table(head: bytes | memoryview, file_size: int, *, name: str) -> tuple[int, int]:
    """Offset and byte length of the section header table (0, 0 when there is none)."""
    (e_shoff,) = struct.unpack_from("<Q", head, 40)
    e_shentsize, e_shnum = struct.unpack_from("<HH", head, 58)
    if e_shnum == 0:
        return 0, 0
    if e_shentsize < 64 or e_shoff + e_shnum * e_shentsize > file_size:
        raise LoaderError(f"{name}: section headers lie outside the file")
    return e_shoff, e_shnum * e_shentsize


def elf_end(head: bytes | memoryview, segments: list[Segment], shdrs: bytes | memoryview) -> int:
    """One past the ELF's last byte: what follows is the kernel's relocation table, if any."""
    e_phoff, e_shoff = struct.unpack_from("<QQ", head, 32)
    e_phentsize, e_phnum, e_shentsize = struct.unpack_from("<HHH", head, 54)
    end = max(64, e_phoff + e_phnum * e_phentsize, e_shoff + len(shdrs))
    end = max(end, *(s.offset + s.filesz for s in segments))
    for at in range(0, len(shdrs), e_shentsize):
        sh_type, _flags, _addr, sh_offset, sh_size = struct.unpack_from("<IQQQQ", shdrs, at + 4)
        if sh_type != SHT_NOBITS:
            end = max(end, sh_offset + sh_size)
    return end
