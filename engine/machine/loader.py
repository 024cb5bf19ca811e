"""Kernel loading: ELF vmlinux, and bzImage by host-side decompression of its payload.

Two steps: ``open_kernel`` parses an image (``KernelImage``: segments, setup header, relocation
table) and ``KernelImage.load`` copies it into guest memory at a ``kaslr.Placement`` and reports
facts (``LoadResult``); registers, the zero page and E820 belong to ``bootparams``/``regs``
(linux-loader's split). For a bzImage the guest never runs the decompressor: the payload is
decompressed here, and ``kaslr`` does the decompressor's randomization (docs/boot.md). Everything
is tested with in-memory images and with Debian's real bzImage.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import GuestMemoryError
from engine.machine import kaslr, layout
from engine.machine.elf import (
    ELF_MAGIC,
    LoaderError,
    Segment,
    elf_end,
    elf_layout,
    section_table,
)
from engine.machine.memory import GuestMemory

if TYPE_CHECKING:
    from typing import BinaryIO

HDRS_MAGIC = 0x53726448  # "HdrS" at HEADER
XLF_KERNEL_64 = 1
LOADED_HIGH = 1

# Setup-header fields (Documentation/arch/x86/boot.rst): the same offsets in the bzImage and in
# ``boot_params``, where ``bootparams`` copies the header.
SETUP_HEADER = 0x1F1  # setup_sects, the header's first field
BOOT_FLAG = 0x1FE
JUMP_END = 0x201  # the header ends at HEADER + this byte
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
RELOCATABLE_KERNEL = 0x234
XLOADFLAGS = 0x236
CMDLINE_SIZE = 0x238
PAYLOAD_OFFSET = 0x248  # payload_offset, then payload_length
PREF_ADDRESS = 0x258  # 2.10+, as init_size
INIT_SIZE = 0x260
SETUP_HEADER_MIN_LEN = 0x250  # the image holds the header through payload_length


@dataclass(frozen=True, slots=True)
class LoadResult:
    entry: int  # 64-bit entry point (guest physical)
    kernel_start: int  # lowest guest address written
    kernel_end: int  # one past the highest (including BSS)
    image_format: str  # "elf" | "bzimage"
    compression: str = "none"
    setup_header: bytes | None = None  # bzImage bytes [SETUP_HEADER, end of header)
    placement: kaslr.Placement = kaslr.LINKED  # randomized: the zero page gets KASLR_FLAG

    @property
    def initrd_addr_max(self) -> int:
        return _initrd_addr_max(self.setup_header)

    @property
    def cmdline_size(self) -> int:
        v = _header_u32(self.setup_header, CMDLINE_SIZE)
        return layout.CMDLINE_MAX_SIZE - 1 if v is None else v or 255


def _header_u32(header: bytes | None, offset: int) -> int | None:
    """The 32-bit setup-header field at boot_params ``offset``, None if the header lacks it."""
    at = offset - SETUP_HEADER
    if header is None or len(header) < at + 4:
        return None
    return struct.unpack_from("<I", header, at)[0]


def _initrd_addr_max(header: bytes | None) -> int:
    v = _header_u32(header, INITRD_ADDR_MAX)
    return 0x7FFF_FFFF if v is None else v


def load_kernel(
    mem: GuestMemory,
    image: BinaryIO | bytes | memoryview,
    *,
    name: str = "kernel",
    cmdline: str = "",
    avoid: Sequence[tuple[int, int]] = (),
    rng: kaslr.RandomBelow = kaslr.SYSTEM_RANDOM,
) -> LoadResult:
    """Open, place (randomized unless ``nokaslr`` is in ``cmdline``) and load in one call."""
    kernel = open_kernel(image, name=name)
    ram = [(r.guest_addr, r.size) for r in mem.regions]
    return kernel.load(mem, kernel.placement(ram, avoid=avoid, cmdline=cmdline, rng=rng))


def open_kernel(image: BinaryIO | bytes | memoryview, *, name: str = "kernel") -> KernelImage:
    """Parse an ELF vmlinux or a bzImage (recognised by content, not name); nothing is loaded.

    An ELF in a real file is later read straight into guest RAM segment by segment
    (``preadv``): no 50 MB intermediate copy, slow under the nested rig's TCG (docs/performance.md).
    """
    fd = _fileno(image)
    if fd is not None and os.pread(fd, 4, 0) == ELF_MAGIC:
        return _open_elf_fd(fd, name=name)
    data = image if isinstance(image, bytes | memoryview) else image.read()
    if data[:4] == ELF_MAGIC:
        return _open_elf(data, name=name)
    if len(data) > VERSION and struct.unpack_from("<I", data, HEADER)[0] == HDRS_MAGIC:
        return _open_bzimage(data, name=name)
    raise LoaderError(
        f"{name}: neither an ELF vmlinux nor a bzImage (starts with {bytes(data[:4]).hex()})",
        hint="pass a vmlinux or a vmlinuz/bzImage file",
    )


def _fileno(image: object) -> int | None:
    fileno = getattr(image, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) else None


def _open_elf(
    data: bytes | memoryview,
    *,
    name: str,
    header: SetupHeader | None = None,
    compression: str = "none",
) -> KernelImage:
    entry, segments = elf_layout(data, len(data), name=name)
    shoff, shlen = section_table(data, len(data), name=name)
    view = memoryview(data)
    end = elf_end(data, segments, view[shoff : shoff + shlen])

    def copy(mem: GuestMemory, seg: Segment, addr: int) -> None:
        mem.write(addr, view[seg.offset : seg.offset + seg.filesz])

    fmt = "elf" if header is None else "bzimage"
    return KernelImage(name, fmt, compression, entry, tuple(segments), view[end:], header, copy)


def _open_elf_fd(fd: int, *, name: str) -> KernelImage:
    """``_open_elf`` on an open file: headers and the relocation table read with ``pread``."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 4096, 0)
    if len(head) >= 64 and head[:4] == ELF_MAGIC:
        e_phoff = struct.unpack_from("<Q", head, 32)[0]
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
        need = e_phoff + e_phentsize * e_phnum
        if len(head) < need <= size:
            head = os.pread(fd, need, 0)
    entry, segments = elf_layout(head, size, name=name)
    shoff, shlen = section_table(head, size, name=name)
    end = elf_end(head, segments, os.pread(fd, shlen, shoff) if shlen else b"")

    def copy(mem: GuestMemory, seg: Segment, addr: int) -> None:
        views = mem.slices(addr, seg.filesz)  # raises GuestMemoryError outside RAM
        offset = seg.offset
        for v in views:
            while len(v):
                n = os.preadv(fd, [v], offset)
                if n <= 0:
                    raise LoaderError(f"{name}: file ended inside segment {seg.index}")
                offset += n
                v = v[n:]

    tail = os.pread(fd, size - end, end) if end < size else b""
    return KernelImage(name, "elf", "none", entry, tuple(segments), tail, None, copy)


@dataclass(frozen=True, slots=True)
class SetupHeader:
    setup_sects: int
    version: int
    loadflags: int
    xloadflags: int
    payload_offset: int
    payload_length: int
    kernel_alignment: int
    relocatable: bool
    init_size: int  # 0 before protocol 2.10
    raw: bytes


def parse_setup_header(data: bytes | memoryview, *, name: str = "kernel") -> SetupHeader:
    """Boot-protocol checks in order: HdrS, version ≥ 2.08 (payload fields), LOADED_HIGH."""
    if len(data) < SETUP_HEADER_MIN_LEN or struct.unpack_from("<I", data, HEADER)[0] != HDRS_MAGIC:
        raise LoaderError(f"{name}: no bzImage setup header (HdrS) at {HEADER:#x}")
    (version,) = struct.unpack_from("<H", data, VERSION)
    if version < 0x208:
        raise LoaderError(
            f"{name}: boot protocol {version >> 8}.{version & 0xFF:02d} is too old (need 2.08+)",
            hint="use a Linux 2.6.26+ kernel or its ELF vmlinux",
        )
    loadflags = data[LOADFLAGS]
    if not loadflags & LOADED_HIGH:
        raise LoaderError(f"{name}: a zImage (not LOADED_HIGH) is not supported")
    setup_sects = data[SETUP_HEADER] or 4
    header_end = HEADER + data[JUMP_END]
    (xloadflags,) = struct.unpack_from("<H", data, XLOADFLAGS)
    payload_offset, payload_length = struct.unpack_from("<II", data, PAYLOAD_OFFSET)
    (kernel_alignment,) = struct.unpack_from("<I", data, KERNEL_ALIGNMENT)
    init_size = 0
    if version >= 0x20A and header_end >= INIT_SIZE + 4:
        (init_size,) = struct.unpack_from("<I", data, INIT_SIZE)
    return SetupHeader(
        setup_sects,
        version,
        loadflags,
        xloadflags,
        payload_offset,
        payload_length,
        kernel_alignment,
        bool(data[RELOCATABLE_KERNEL]),
        init_size,
        bytes(data[SETUP_HEADER:header_end]),
    )


def extract_vmlinux(
    data: bytes | memoryview, *, name: str = "kernel"
) -> tuple[SetupHeader, str, bytes | memoryview]:
    """The bzImage's setup header, payload compression and decompressed ELF (with whatever the
    build appended to it: the relocation table)."""
    hdr = parse_setup_header(data, name=name)
    start = (hdr.setup_sects + 1) * 512 + hdr.payload_offset
    end = start + hdr.payload_length
    if hdr.payload_length < 8 or end > len(data):
        raise LoaderError(
            f"{name}: payload [{start:#x}, {end:#x}) lies outside the {len(data):#x}-byte file"
        )
    from engine.machine.decompress import decompress  # lazy: bz2/lzma/subprocess cost start-up

    fmt, elf = decompress(bytes(data[start:end]), what=f"{name} payload")
    if elf[:4] != ELF_MAGIC:
        raise LoaderError(f"{name}: the decompressed {fmt} payload is not an ELF vmlinux")
    return hdr, fmt, elf


def _open_bzimage(data: bytes | memoryview, *, name: str) -> KernelImage:
    hdr, fmt, elf = extract_vmlinux(data, name=name)
    return _open_elf(elf, name=name, header=hdr, compression=fmt)


@dataclass(frozen=True, slots=True)
class KernelImage:
    """A parsed kernel: where its segments were linked, what the boot protocol allows, and the
    bytes after its ELF (the relocation table; empty for a plain ELF or a kernel built without
    KASLR), parsed only when the kernel is randomized: ``nokaslr`` boots whatever follows."""

    name: str
    image_format: str  # "elf" | "bzimage"
    compression: str
    entry: int
    segments: tuple[Segment, ...]
    reloc_tail: bytes | memoryview
    header: SetupHeader | None
    copy: Callable[[GuestMemory, Segment, int], None]  # a segment's file bytes to an address
    _parsed: dict[str, kaslr.RelocTable | None] = field(default_factory=dict, compare=False)

    @property
    def linked_start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def linked_end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    @property
    def initrd_addr_max(self) -> int:
        return _initrd_addr_max(None if self.header is None else self.header.raw)

    def relocs(self) -> kaslr.RelocTable | None:
        """The parsed table (once: placement and load both need it)."""
        if "relocs" not in self._parsed:
            self._parsed["relocs"] = kaslr.parse_relocs(self.reloc_tail, name=self.name)
        return self._parsed["relocs"]

    def placement(
        self,
        ram: Sequence[tuple[int, int]],
        *,
        avoid: Sequence[tuple[int, int]] = (),
        cmdline: str = "",
        rng: kaslr.RandomBelow = kaslr.SYSTEM_RANDOM,
    ) -> kaslr.Placement:
        """Where to load: the decompressor's random choice (``kaslr.choose``) within what the
        setup header allows (``relocatable_kernel``, ``kernel_alignment``, ``init_size``); an
        ELF has no header, so its segments' alignment and extent stand in."""
        hdr = self.header
        extent = self.linked_end - self.linked_start
        return kaslr.choose(
            linked_base=self.linked_start,
            size=max(extent, hdr.init_size if hdr else 0),
            align=hdr.kernel_alignment if hdr else max(s.align for s in self.segments),
            ram=ram,
            avoid=avoid,
            relocatable=hdr.relocatable if hdr else True,
            table=None if kaslr.nokaslr(cmdline) else self.relocs(),
            cmdline=cmdline,
            rng=rng,
        )

    def load(self, mem: GuestMemory, placement: kaslr.Placement = kaslr.LINKED) -> LoadResult:
        """Copy each segment ``placement.phys_delta`` above its physical address, zero its BSS
        tail, and relocate by ``placement.virt_delta``; a segment outside RAM is an error."""
        delta = placement.phys_delta
        for seg in self.segments:
            addr = seg.paddr + delta
            try:
                self.copy(mem, seg, addr)
                if seg.memsz > seg.filesz:
                    mem.fill(addr + seg.filesz, seg.memsz - seg.filesz)
            except GuestMemoryError:
                raise LoaderError(
                    f"{self.name}: segment {seg.index} [{addr:#x}, +{seg.memsz:#x}) does not fit "
                    f"guest RAM (RAM ends at {mem.last_addr:#x})",
                    hint="give the VM more memory",
                ) from None
        start = self.linked_start + delta
        if placement.virt_delta:
            self._relocate(mem, start, placement.virt_delta)
        return LoadResult(
            entry=self.entry + delta,
            kernel_start=start,
            kernel_end=self.linked_end + delta,
            image_format=self.image_format,
            compression=self.compression,
            setup_header=None if self.header is None else self.header.raw,
            placement=placement,
        )

    def _relocate(self, mem: GuestMemory, start: int, virt_delta: int) -> None:
        """Apply the table in place (one view when the image sits in one region)."""
        table = self.relocs()
        if table is None:
            raise LoaderError(f"{self.name}: no relocation table to move the kernel's text")
        limit = max(s.paddr + s.filesz for s in self.segments) - self.linked_start

        def apply(image: memoryview) -> None:
            kaslr.apply_relocs(
                image, table, linked_base=self.linked_start, limit=limit, delta=virt_delta,
                name=self.name,
            )  # fmt: skip

        try:
            apply(mem.view(start, limit))
        except GuestMemoryError:  # the image straddles two regions (NUMA pieces): copy, patch
            buf = bytearray(b"".join(mem.slices(start, limit)))
            apply(memoryview(buf))
            mem.write(start, buf)
