"""Host-side decompression of a bzImage payload (so the guest never runs the decompressor).

Under PVM every guest CPL0 instruction is emulated; Debian's 14 MB LZ4 payload would take minutes to
unpack inside the guest and 0.1 s here (docs/boot.md, "Kernel images"). gzip, xz, lzma and bzip2
come from the standard library; lz4 and zstd are decoded by the system's liblz4/libzstd through
cffi, or by the ``lz4``/``zstd`` programs when the libraries are absent. Every payload ends with the
decompressed size as a u32 (the kernel's ``size_append``), which sizes the output buffer.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import zlib
from collections.abc import Callable

from engine.errors import EngineError

LZ4_LEGACY_MAGIC = 0x184C2102

#: What a decoder returns: the decompressed bytes, or a view over its output buffer.
Decoded = bytes | memoryview


class DecompressError(EngineError):
    """The payload's format is unknown, has no decoder here, or is corrupt."""


def detect_format(payload: bytes | memoryview) -> str:
    """The compression of a kernel payload, by magic number (as the kernel's decompressors do)."""
    head = bytes(payload[:6])
    if head[:2] in (b"\x1f\x8b", b"\x1f\x9e"):
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:4] == b"\x02\x21\x4c\x18":
        return "lz4"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    if head[:4] == b"\x89LZO":
        return "lzo"
    if head[:4] == b"\x7fELF":
        return "none"
    return "unknown"


def _expected_size(payload: bytes) -> int:
    return struct.unpack_from("<I", payload, len(payload) - 4)[0]


def _gzip(payload: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)


def _xz(payload: bytes) -> bytes:
    import lzma  # lazy, as bz2 and subprocess: only the payload's own decoder is imported

    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)


def _lzma(payload: bytes) -> bytes:
    import lzma

    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)


def _bzip2(payload: bytes) -> bytes:
    import bz2

    return bz2.BZ2Decompressor().decompress(payload)


def _dlopen(name: str) -> ctypes.CDLL | None:
    """The system library, through ctypes: cffi's run-time ``cdef`` would import pycparser
    (slow to import in the nested rig, where the engine runs under TCG: docs/performance.md)."""
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _addr(buf: bytes | bytearray) -> int:
    """The address of a buffer's first byte (valid while ``buf`` lives and is not resized)."""
    if isinstance(buf, bytearray):
        return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0


def _lz4_lib(payload: bytes) -> memoryview | None:
    """LZ4 legacy frames: repeated [u32 csize][block], each block ≤ 8 MiB of output."""
    lib = _dlopen("liblz4.so.1")
    if lib is None:
        return None
    fn = lib.LZ4_decompress_safe
    fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    total = _expected_size(payload)
    cap = total + (8 << 20)
    out = bytearray(cap)  # calloc'd: untouched pages cost nothing
    src, dst = _addr(payload), _addr(out)
    pos, written = 4, 0
    while pos + 4 <= len(payload):
        (csize,) = struct.unpack_from("<I", payload, pos)
        if csize == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if csize > len(payload) - pos - 4:
            break  # the trailing size word
        pos += 4
        n = fn(src + pos, dst + written, csize, min(8 << 20, cap - written))
        if n < 0:
            raise DecompressError(f"lz4 payload is corrupt at byte {pos}")
        written += n
        pos += csize
    return memoryview(out)[:written]


def _zstd_lib(payload: bytes) -> memoryview | None:
    lib = _dlopen("libzstd.so.1")
    if lib is None:
        return None
    lib.ZSTD_decompress.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
    )
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    lib.ZSTD_isError.argtypes = (ctypes.c_size_t,)
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_getErrorName.argtypes = (ctypes.c_size_t,)
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    total = _expected_size(payload)
    out = bytearray(total)
    n = lib.ZSTD_decompress(_addr(out), total, _addr(payload), len(payload) - 4)
    if lib.ZSTD_isError(n):
        raise DecompressError(f"zstd payload: {lib.ZSTD_getErrorName(n).decode()}")
    return memoryview(out)[:n]


def _with_program(program: str, args: list[str]) -> Callable[[bytes], bytes | None]:
    def run(payload: bytes) -> bytes | None:
        import shutil
        import subprocess

        exe = shutil.which(program)
        if exe is None:
            return None
        p = subprocess.run([exe, *args], input=payload[:-4], capture_output=True, check=False)
        if p.returncode != 0 and not p.stdout:
            raise DecompressError(f"{program} failed: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout

    return run


#: format → decoders tried in order; a decoder returns None when it is not available here.
DECODERS: dict[str, tuple[Callable[[bytes], Decoded | None], ...]] = {
    "gzip": (_gzip,),
    "xz": (_xz,),
    "lzma": (_lzma,),
    "bzip2": (_bzip2,),
    "lz4": (_lz4_lib, _with_program("lz4", ["-dc"])),
    "zstd": (_zstd_lib, _with_program("zstd", ["-dc"])),
}
_INSTALL = {
    "lz4": "install Debian package liblz4-1 (library) or lz4 (program)",
    "zstd": "install Debian package libzstd1 (library) or zstd (program)",
    "lzo": "boot the kernel's uncompressed vmlinux instead (no LZO decoder is built in)",
}


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """What a decoder raises on corrupt data; of the lazily imported decoders, only those
    already imported (so it is asked after the decoder ran)."""
    lz = sys.modules.get("lzma")
    return (zlib.error, OSError, EOFError, *((lz.LZMAError,) if lz is not None else ()))


def decompress(payload: bytes, *, what: str = "kernel payload") -> tuple[str, Decoded]:
    """``(format, data)`` for a kernel payload; a clear ``DecompressError`` names what is missing.

    ``data`` may be a memoryview over a decoder's buffer (no copy of a 50 MB kernel).
    """
    fmt = detect_format(payload)
    if fmt == "none":
        return fmt, payload
    decoders = DECODERS.get(fmt)
    if decoders is None:
        hint = _INSTALL.get(
            fmt, "boot an ELF vmlinux, or a bzImage compressed with gzip/xz/lz4/zstd"
        )
        raise DecompressError(
            f"{what}: no decoder for {fmt} compression (magic {bytes(payload[:4]).hex()})",
            hint=hint,
        )
    for dec in decoders:
        try:
            data = dec(payload)
        except _corrupt_errors() as e:
            raise DecompressError(f"{what}: {fmt} data is corrupt: {e}") from None
        if data is not None:
            return fmt, data
    raise DecompressError(f"{what}: no {fmt} decoder on this host", hint=_INSTALL.get(fmt, ""))
