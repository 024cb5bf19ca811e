"""A minimal AML encoder: the nine constructs a microVM DSDT needs, as pure functions to bytes.

Linux finds virtio-mmio devices and COM1's interrupt only through the DSDT on a direct-boot,
HW-reduced guest (docs/engine.md, "ACPI"), so we need AML, but only a little: names, integers,
strings, EISA ids, packages, buffers, scopes, devices and three resource descriptors. Each
function returns the encoded bytes of one term; compose them by nesting calls::

    device("V000", name("_HID", string("LNRO0005")), name("_CRS", resource_template(...)))

The encoding follows ACPI 6.5 §20 (AML grammar) and §6.4 (resource descriptors), as do
Firecracker ``src/acpi-tables/src/aml.rs`` and rust-vmm ``acpi_tables``; ``iasl -d`` decodes
the result (tests/unit/test_acpi_aml.py).
"""

from __future__ import annotations

import struct

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
QWORD_PREFIX = 0x0E
STRING_PREFIX = 0x0D
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
ROOT_CHAR = 0x5C
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F

_SEG_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def name_seg(seg: str) -> bytes:
    """A 4-character NameSeg, padded with ``_`` (``"COM1"``, ``"_SB"`` → ``_SB_``)."""
    raw = seg.encode("ascii")
    if not 1 <= len(raw) <= 4 or not set(raw) <= _SEG_CHARS or raw[:1].isdigit():
        raise ValueError(f"AML name segment {seg!r}: 1-4 of A-Z 0-9 _, not starting with a digit")
    return raw.ljust(4, b"_")


def name_string(path: str) -> bytes:
    """A NameString: optional root ``\\`` then dot-separated segments (``\\_SB.COM1``)."""
    out = bytearray()
    if path.startswith("\\"):
        out.append(ROOT_CHAR)
        path = path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if len(segs) == 0:
        out.append(0x00)  # NullName
    elif len(segs) == 2:
        out.append(DUAL_NAME_PREFIX)
    elif len(segs) > 2:
        out += bytes((MULTI_NAME_PREFIX, len(segs)))
    for s in segs:
        out += s
    return bytes(out)


def pkg_length(body_len: int) -> bytes:
    """The PkgLength for a body of ``body_len`` bytes; the encoded length counts itself."""
    if body_len + 1 < 1 << 6:
        return bytes((body_len + 1,))
    for nbytes in (2, 3, 4):
        total = body_len + nbytes
        if total < 1 << (4 + 8 * (nbytes - 1)):
            out = [((nbytes - 1) << 6) | (total & 0xF)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(nbytes - 1)]
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too long (PkgLength limit 2**28)")


def integer(value: int) -> bytes:
    """The shortest integer encoding (ZeroOp, OneOp, Byte/Word/DWord/QWord constant)."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} out of range 0..2**64-1")
    if value == 0:
        return bytes((ZERO_OP,))
    if value == 1:
        return bytes((ONE_OP,))
    if value == (1 << 64) - 1:
        return bytes((ONES_OP,))
    if value <= 0xFF:
        return bytes((BYTE_PREFIX, value))
    if value <= 0xFFFF:
        return bytes((WORD_PREFIX,)) + struct.pack("<H", value)
    if value <= 0xFFFF_FFFF:
        return bytes((DWORD_PREFIX,)) + struct.pack("<I", value)
    return bytes((QWORD_PREFIX,)) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    """A String constant (ASCII, NUL-terminated)."""
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ValueError("AML string must not contain NUL")
    return bytes((STRING_PREFIX,)) + raw + b"\x00"


def eisa_id(text: str) -> bytes:
    """``EisaId("PNP0501")``: 3 letters + 4 hex digits packed in a DWord, stored big-endian."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"EISA id {text!r} must be 3 upper-case letters and 4 hex digits")
    c0, c1, c2 = (ord(c) - 0x40 for c in text[:3])
    value = (c0 << 26) | (c1 << 21) | (c2 << 16) | int(text[3:], 16)
    return bytes((DWORD_PREFIX,)) + struct.pack(">I", value)


def name(path: str, value: bytes) -> bytes:
    """``Name(path, value)``; ``value`` is an encoded data object."""
    return bytes((NAME_OP,)) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    """``Scope(path) { terms }``."""
    body = name_string(path) + b"".join(terms)
    return bytes((SCOPE_OP,)) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    """``Device(path) { terms }``."""
    body = name_string(path) + b"".join(terms)
    return bytes((EXT_OP_PREFIX, DEVICE_OP)) + pkg_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    """``Package() { elements }`` of encoded data objects (at most 255 elements)."""
    if len(elements) > 0xFF:
        raise ValueError("AML Package holds at most 255 elements")
    body = bytes((len(elements),)) + b"".join(elements)
    return bytes((PACKAGE_OP,)) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """``Buffer() { data }``."""
    body = integer(len(data)) + data
    return bytes((BUFFER_OP,)) + pkg_length(len(body)) + body


# -- resource descriptors (ACPI 6.5 §6.4) ---------------------------------------------------

END_TAG = bytes((0x79, 0x00))  # checksum 0: "treat as correct"


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate() { descriptors }``: a Buffer ending with the End Tag."""
    return buffer(b"".join(descriptors) + END_TAG)


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """``Memory32Fixed(ReadWrite, base, length)`` (large descriptor 0x86)."""
    if base < 0 or length <= 0 or base + length > 1 << 32:
        raise ValueError(f"Memory32Fixed [{base:#x}, +{length:#x}) must lie below 4 GiB")
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, length)


def interrupt(
    gsi: int, *, edge: bool = True, active_low: bool = False, shared: bool = False
) -> bytes:
    """``Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|Low, Exclusive|Shared) {gsi}``."""
    flags = 0x01 | (0x02 if edge else 0) | (0x04 if active_low else 0) | (0x08 if shared else 0)
    return struct.pack("<BHBBI", 0x89, 6, flags, 1, gsi)


def io_port(minimum: int, maximum: int, alignment: int, length: int) -> bytes:
    """``IO(Decode16, min, max, align, len)`` (small descriptor 0x47)."""
    return struct.pack("<BBHHBB", 0x47, 0x01, minimum, maximum, alignment, length)
