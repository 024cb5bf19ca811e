"""ACPI system description table framing: the 36-byte header, checksums and the GAS.

Every ACPI table starts with the same header, and the whole table (header included) must sum to
zero modulo 256; Linux rejects a table whose checksum is wrong. ``sdt`` builds the header around
a finished body and fixes the checksum in one step, so no builder can forget it. Everything here
is pure: values in, bytes out (as rust-vmm ``acpi_tables`` does).

Layout (ACPI 6.5 §5.2.6): ``char sig[4]; u32 length; u8 revision; u8 checksum; char oem_id[6];
char oem_table_id[8]; u32 oem_revision; char creator_id[4]; u32 creator_revision``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_SIZE = HEADER.size  # 36
CHECKSUM_OFFSET = 9

OEM_ID = b"SVLNCH"
OEM_TABLE_ID = b"SVLAUNCH"
OEM_REVISION = 1
CREATOR_ID = b"SVLN"
CREATOR_REVISION = 1


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte counted as zero) sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete table: header + ``body``, length and checksum filled in."""
    if len(signature) != 4:
        raise ValueError(f"ACPI signature {signature!r} must be 4 bytes")
    length = HEADER_SIZE + len(body)
    header = HEADER.pack(
        signature,
        length,
        revision,
        0,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        CREATOR_ID,
        CREATOR_REVISION,
    )
    table = bytearray(header + body)
    table[CHECKSUM_OFFSET] = checksum(table)
    return bytes(table)


# -- Generic Address Structure (ACPI 6.5 §5.2.3.2) ------------------------------------------

SPACE_MEMORY = 0
SPACE_IO = 1
ACCESS_BYTE = 1

GAS = struct.Struct("<BBBBQ")  # space, bit width, bit offset, access size, address


@dataclass(frozen=True, slots=True)
class Gas:
    """A register address as ACPI names it (I/O port or MMIO, width, access size)."""

    space: int
    bit_width: int
    address: int
    bit_offset: int = 0
    access_size: int = ACCESS_BYTE

    def pack(self) -> bytes:
        return GAS.pack(self.space, self.bit_width, self.bit_offset, self.access_size, self.address)


NULL_GAS = bytes(GAS.size)
