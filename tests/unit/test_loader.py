"""Kernel loading from in-memory images: ELF, and bzImage with each payload compression."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from rigutil import guest_file
from tiny_guest import elf_image

from engine.machine.decompress import DecompressError, detect_format
from engine.machine.loader import LoaderError, extract_vmlinux, load_kernel
from engine.machine.memory import GuestMemory

ROOT = Path(__file__).resolve().parents[2]
CODE = bytes(range(256)) * 3


def mem(size: int = 4 << 20) -> GuestMemory:
    return GuestMemory.anonymous([(0, size)])


def _lz4_legacy(data: bytes) -> bytes:
    return subprocess.run(
        ["lz4", "-l", "-c", "-9"], input=data, capture_output=True, check=True
    ).stdout


def _zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-c", "-q"], input=data, capture_output=True, check=True).stdout


COMPRESSORS = {
    "gzip": gzip.compress,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "bzip2": bz2.compress,
    "lz4": _lz4_legacy,
    "zstd": _zstd,
}


def bzimage(payload: bytes, *, setup_sects: int = 4, version: int = 0x20F) -> bytes:
    """A bzImage shell: setup sectors with a real-looking header, then the protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200] = 0xEB
    setup[0x201] = 0x6A  # header ends at 0x26C
    struct.pack_into("<I", setup, 0x202, 0x53726448)
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<H", setup, 0x236, 0x7F)
    struct.pack_into("<I", setup, 0x238, 0x7FF)
    pm_head = b"\x90" * 0x100
    struct.pack_into("<II", setup, 0x248, len(pm_head), len(payload))
    return bytes(setup) + pm_head + payload


def sized(data: bytes, fmt: str) -> bytes:
    """The kernel's payload: compressed data + u32 decompressed size (size_append)."""
    return COMPRESSORS[fmt](data) + struct.pack("<I", len(data))


def test_elf_segments_land_at_their_physical_address() -> None:
    m = mem()
    res = load_kernel(m, elf_image(CODE, bss=4096))
    assert res.entry == 0x100000 and res.image_format == "elf"
    assert m.read(0x100000, len(CODE)) == CODE
    assert res.kernel_end == 0x100000 + len(CODE) + 4096


def test_elf_bss_is_zeroed_even_on_dirty_memory() -> None:
    m = mem()
    m.fill(0x100000, 0x3000, 0xAA)
    load_kernel(m, elf_image(CODE, bss=4096))
    assert m.read(0x100000 + len(CODE), 4096) == bytes(4096)


def test_elf_that_does_not_fit_names_the_segment() -> None:
    with pytest.raises(LoaderError, match=r"segment 0 .* does not fit guest RAM") as info:
        load_kernel(mem(1 << 20), elf_image(CODE))
    assert "more memory" in info.value.hint


def test_elf_entry_below_1mib_is_refused() -> None:
    with pytest.raises(LoaderError, match="below 1 MiB"):
        load_kernel(mem(), elf_image(CODE, entry=0x8000))


def test_garbage_is_neither_elf_nor_bzimage() -> None:
    with pytest.raises(LoaderError, match="neither an ELF vmlinux nor a bzImage"):
        load_kernel(mem(), b"MZ" + bytes(4096))


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_bzimage_payload_is_decompressed_on_the_host(fmt: str) -> None:
    if fmt in ("lz4", "zstd") and shutil.which(fmt) is None:
        pytest.skip(f"{fmt} program needed to build the test image")
    elf = elf_image(CODE)
    image = bzimage(sized(elf, fmt))
    assert detect_format(sized(elf, fmt)) == fmt
    m = mem()
    res = load_kernel(m, image)
    assert res.image_format == "bzimage" and res.compression == fmt
    assert m.read(0x100000, len(CODE)) == CODE
    # the setup header is handed on for the zero page, from 0x1F1 to 0x202+jump
    assert res.setup_header == image[0x1F1:0x26C]
    assert res.initrd_addr_max == 0x7FFFFFFF and res.cmdline_size == 0x7FF


def test_missing_decoder_is_named() -> None:
    image = bzimage(b"\x89LZO\x00" + bytes(64))
    with pytest.raises(DecompressError) as info:
        load_kernel(mem(), image)
    assert "no decoder for lzo compression" in str(info.value)
    assert "vmlinux" in info.value.hint


def test_corrupt_payload() -> None:
    bad = b"\x1f\x8b\x08\x00" + bytes(40)
    with pytest.raises(DecompressError, match="gzip data is corrupt"):
        load_kernel(mem(), bzimage(bad))


def test_corrupt_xz_payload() -> None:
    """The lazily imported decoders' errors (lzma's) are corrupt data too, not a crash."""
    bad = b"\xfd7zXZ\x00" + bytes(40)
    with pytest.raises(DecompressError, match="xz data is corrupt"):
        load_kernel(mem(), bzimage(bad))


def test_payload_outside_file() -> None:
    image = bytearray(bzimage(sized(elf_image(CODE), "gzip")))
    struct.pack_into("<I", image, 0x24C, 1 << 30)
    with pytest.raises(LoaderError, match="lies outside"):
        load_kernel(mem(), bytes(image))


def test_old_boot_protocol_is_refused() -> None:
    with pytest.raises(LoaderError, match="too old"):
        load_kernel(mem(), bzimage(sized(elf_image(CODE), "gzip"), version=0x204))


def test_debian_cloud_kernel_matches_its_vmlinux() -> None:
    vmlinuz, vmlinux = guest_file("vmlinuz"), guest_file("vmlinux")
    hdr, fmt, elf = extract_vmlinux(vmlinuz.read_bytes())
    assert fmt == "lz4" and hdr.version >= 0x20C
    assert elf == vmlinux.read_bytes()
