"""The AML encoder: exact bytes for known ASL, PkgLength at its boundaries, iasl round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from acpi_plans import disassemble, needs_iasl, roundtrip, same_but_creator

from engine.machine.acpi import aml
from engine.machine.acpi.sdt import sdt


def test_virtio_device_bytes_match_the_verified_encoding() -> None:
    # Device (V000) {
    #     Name (_HID, "LNRO0005")
    #     Name (_UID, Zero)
    #     Name (_CCA, One)
    #     Name (_CRS, ResourceTemplate () {
    #         Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000, )
    #         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {0x00000005}
    #     })
    # }
    expected = bytes.fromhex(
        "5b82410456303030085f4849440d4c4e524f30303035"
        "00085f55494400085f43434101085f435253111a0a17"
        "860900010000 00d0 00100000 890600030105000000 7900".replace(" ", "")
    )
    got = aml.device(
        "V000",
        aml.name("_HID", aml.string("LNRO0005")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CCA", aml.integer(1)),
        aml.name(
            "_CRS",
            aml.resource_template(aml.memory32_fixed(0xD000_0000, 0x1000), aml.interrupt(5)),
        ),
    )
    assert got == expected


def test_eisa_id_packs_big_endian() -> None:
    # EisaId ("PNP0501")
    assert aml.eisa_id("PNP0501") == bytes.fromhex("0c41d00501")
    with pytest.raises(ValueError):
        aml.eisa_id("pnp0501")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),  # Zero
        (1, "01"),  # One
        (5, "0a05"),
        (0xFF, "0aff"),
        (0x100, "0b0001"),
        (0x1_0000, "0c00000100"),
        (0x1_0000_0000, "0e0000000001000000"),
        ((1 << 64) - 1, "ff"),  # Ones
    ],
)
def test_integer_uses_the_shortest_encoding(value: int, encoded: str) -> None:
    assert aml.integer(value) == bytes.fromhex(encoded)


@pytest.mark.parametrize(
    ("body", "encoded"),
    [
        (0, "01"),
        (62, "3f"),  # 63 in all: the last one-byte length
        (63, "4104"),  # 65 = 0x41: lead (1 << 6) | 0x1, then 0x41 >> 4
        (4093, "4fff"),  # 4095 = 0xFFF: the last two-byte length
        (4094, "810001"),  # 4097 = 0x1001: three bytes
    ],
)
def test_pkg_length_encodings(body: int, encoded: str) -> None:
    assert aml.pkg_length(body) == bytes.fromhex(encoded)


@pytest.mark.parametrize("body", [0, 62, 63, 64, 4092, 4093, 4094, 1 << 20, (1 << 20) - 3])
def test_pkg_length_decodes_back_to_body_plus_itself(body: int) -> None:
    enc = aml.pkg_length(body)
    lead = enc[0]
    follow = lead >> 6
    assert len(enc) == follow + 1
    if follow == 0:
        total = lead & 0x3F
    else:
        total = lead & 0x0F
        for i, b in enumerate(enc[1:]):
            total |= b << (4 + 8 * i)
    assert total == body + len(enc)


def test_pkg_length_refuses_beyond_2_pow_28() -> None:
    with pytest.raises(ValueError):
        aml.pkg_length(1 << 28)


def test_name_strings() -> None:
    assert aml.name_string("_SB") == b"_SB_"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"
    for bad in ("toolong", "a", "1ABC", ""):
        with pytest.raises(ValueError):
            aml.name_seg(bad)


@needs_iasl
@pytest.mark.parametrize("size", [10, 60, 61, 62, 63, 64, 4090, 4096, 5000])
def test_buffers_across_pkg_length_sizes_roundtrip_through_iasl(size: int, tmp_path: Path) -> None:
    """One-, two- and three-byte PkgLengths inside Scope, Device and Buffer decode and recompile."""
    data = bytes(i * 7 % 251 for i in range(size))
    body = aml.scope(
        "\\_SB",
        aml.device(
            "DEV0", aml.name("_HID", aml.string("TEST0001")), aml.name("BUF0", aml.buffer(data))
        ),
    )
    table = sdt(b"DSDT", 2, body)
    back = roundtrip(table, tmp_path)
    assert same_but_creator(table, back)


@needs_iasl
def test_package_and_io_decode(tmp_path: Path) -> None:
    body = aml.name("PKG0", aml.package(aml.integer(5), aml.string("x"), aml.integer(1 << 40)))
    body += aml.name("RES0", aml.resource_template(aml.io_port(0x3F8, 0x3F8, 1, 8)))
    text = disassemble(sdt(b"DSDT", 2, body), tmp_path)
    assert "Package (0x03)" in text and '"x"' in text and "0x0000010000000000" in text
    assert "IO (Decode16," in text and "0x03F8" in text
