"""Every ACPI table, disassembled by ``iasl -d``, says what the plan says and compiles back unchanged."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from acpi_plans import (
    IASL,
    TOPOLOGIES,
    disassemble,
    hexfield,
    make_plan,
    needs_iasl,
    roundtrip,
    same_but_creator,
)

from engine.machine.acpi import pm
from engine.machine.acpi.builder import build_acpi
from engine.machine.acpi.sdt import checksum
from engine.machine.acpi.tables import rsdp, slit
from engine.machine.layout import IOAPIC_ADDR, LAPIC_ADDR, MAX_MMIO_DEVICES, VIRTIO_MMIO_SIZE

pytestmark = needs_iasl

ALL_PLANS = [
    pytest.param(make_plan("1cpu"), id="1cpu"),
    pytest.param(make_plan("2s2c", devices=3), id="2s2c-3dev"),
    pytest.param(make_plan("8cpu-dies-threads", devices=MAX_MMIO_DEVICES), id="8cpu-maxdev"),
    pytest.param(make_plan("2s2c", numa=True, devices=2), id="2s2c-numa"),
    pytest.param(make_plan("x2apic", numa=True), id="x2apic-numa"),
    pytest.param(make_plan("1cpu", serial=False), id="no-serial"),
]


@pytest.mark.parametrize("plan", ALL_PLANS)
def test_every_table_disassembles_cleanly_and_compiles_back(plan, tmp_path: Path) -> None:
    blob = build_acpi(plan)
    sigs = [r.signature for r in blob.index]
    want = ["DSDT", "FACP", "APIC"] + (["SRAT", "SLIT"] if plan.numa else []) + ["XSDT"]
    assert sigs == want
    for ref in blob.index:
        table = blob.table(ref.signature)
        assert sum(table) % 256 == 0, ref.signature
        assert struct.unpack_from("<I", table, 4)[0] == len(table) == ref.length
        back = roundtrip(table, tmp_path)
        assert same_but_creator(table, back), ref.signature


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_madt_lists_each_vcpu_apic_id_and_the_ioapic(name: str, tmp_path: Path) -> None:
    plan = make_plan(name)
    text = disassemble(build_acpi(plan).table("APIC"), tmp_path)
    assert hexfield(text, "Local Apic Address") == [LAPIC_ADDR]
    assert hexfield(text, "Flags (decoded below)")[0] == 0  # no PCAT_COMPAT
    xapic = hexfield(text, "Local Apic ID")
    x2apic = hexfield(text, "Processor x2Apic ID")
    assert xapic + x2apic == [v.apic_id for v in plan.vcpus]
    assert all(i <= 254 for i in xapic) and all(i > 254 for i in x2apic)
    assert hexfield(text, "Processor ID") + hexfield(text, "Processor UID") == [
        v.index for v in plan.vcpus
    ]
    assert text.count("Processor Enabled : 1") == len(plan.vcpus)
    assert hexfield(text, "Address") == [IOAPIC_ADDR]  # the IOAPIC entry
    assert hexfield(text, "Interrupt") == [0]  # GSI base
    assert "Interrupt Source Override" not in text


def _devices(text: str) -> dict[str, tuple[str, int, int, int]]:
    """Device name -> (_HID, Memory32Fixed base, length, interrupt) from DSDT ASL."""
    out = {}
    for m in re.finditer(r"Device \((\w+)\)\s*\{(.*?)\n        \}", text, re.S):
        body = m.group(2)
        hid = re.search(r'_HID, (?:EisaId \()?"(\w+)"', body)
        mem = re.search(
            r"Memory32Fixed \(ReadWrite,\s*0x([0-9A-F]+),.*?\n\s*0x([0-9A-F]+),", body, re.S
        )
        io = re.search(r"IO \(Decode16,\s*0x([0-9A-F]+),", body)
        irq = re.search(
            r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x([0-9A-F]+),",
            body,
        )
        if hid and hid.group(1) in ("PNP0C0C", "ACPI0013"):
            continue  # the power button and its GED: tests/unit/test_ged_acpi.py
        assert hid and irq, body
        if mem:
            base, length = int(mem.group(1), 16), int(mem.group(2), 16)
        else:
            assert io
            base, length = int(io.group(1), 16), 0
        out[m.group(1)] = (hid.group(1), base, length, int(irq.group(1), 16))
    return out


@pytest.mark.parametrize("ndev", [0, 1, 5, MAX_MMIO_DEVICES])
def test_dsdt_has_com1_and_one_lnro0005_per_virtio_device(ndev: int, tmp_path: Path) -> None:
    plan = make_plan("2s2c", devices=ndev)
    text = disassemble(build_acpi(plan).table("DSDT"), tmp_path)
    devs = _devices(text)
    assert devs.pop("COM1") == ("PNP0501", 0x3F8, 0, 4)
    want = {
        f"V{i:03d}": ("LNRO0005", d.mmio_base, VIRTIO_MMIO_SIZE, d.irq)
        for i, d in enumerate(plan.devices)
    }
    assert devs == want
    assert "Scope (\\_SB)" in text
    assert re.search(r"Name \(_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*0x05,\s*Zero,\s*Zero", text)


def test_dsdt_without_serial_has_no_com1(tmp_path: Path) -> None:
    text = disassemble(build_acpi(make_plan("1cpu", serial=False)).table("DSDT"), tmp_path)
    assert "COM1" not in text and "PNP0501" not in text


def test_fadt_is_hw_reduced_with_reset_and_sleep_registers(tmp_path: Path) -> None:
    blob = build_acpi(make_plan("1cpu", devices=1))
    text = disassemble(blob.table("FACP"), tmp_path)
    assert hexfield(text, "Revision") == [6]
    assert "Hardware Reduced (V5) : 1" in text
    assert "Reset Register Supported (V2) : 1" in text
    assert "8042 Present on ports 60/64 (V2) : 0" in text
    dsdt = next(r for r in blob.index if r.signature == "DSDT")
    assert hexfield(text, "DSDT Address") == [0, dsdt.addr]  # 32-bit field empty, X_DSDT set
    assert hexfield(text, "Value to cause reset") == [pm.RESET_VALUE]
    # Reset, sleep control and sleep status: all SystemIO byte registers at PM_PORT.
    spaces = hexfield(text, "Space ID")
    addrs = hexfield(text, "Address")
    regs = [(s, a) for s, a in zip(spaces, addrs, strict=True) if a]
    assert regs == [(1, pm.PM_PORT)] * 3
    assert hexfield(text, "SCI Interrupt") == [0]


def test_srat_and_slit_state_the_numa_plan(tmp_path: Path) -> None:
    plan = make_plan("8cpu-dies-threads", numa=True)
    blob = build_acpi(plan)
    text = disassemble(blob.table("SRAT"), tmp_path)
    assert hexfield(text, "Table Revision") == [1]
    assert hexfield(text, "Apic ID") == [v.apic_id for v in plan.vcpus]
    assert hexfield(text, "Proximity Domain Low(8)") == [v.node for v in plan.vcpus]
    assert hexfield(text, "Proximity Domain") == [0, 1]  # memory entries
    assert hexfield(text, "Base Address") == [0, 512 << 20]
    assert hexfield(text, "Address Length") == [512 << 20, 256 << 20]
    assert text.count("Enabled : 1") == len(plan.vcpus) + 2
    stext = disassemble(blob.table("SLIT"), tmp_path)
    assert hexfield(stext, "Localities") == [2]
    rows = re.findall(r"Locality +\d+ : ([0-9A-F ]+)", stext)
    assert [[int(x, 16) for x in r.split()] for r in rows] == [[10, 21], [21, 10]]


def test_srat_uses_x2apic_affinity_for_large_ids(tmp_path: Path) -> None:
    plan = make_plan("x2apic", numa=True)
    text = disassemble(build_acpi(plan).table("SRAT"), tmp_path)
    small = [v for v in plan.vcpus if v.apic_id <= 254]
    big = [v for v in plan.vcpus if v.apic_id > 254]
    assert big
    assert text.count("[Processor Local x2APIC Affinity]") == len(big)
    assert hexfield(text, "Apic ID") == [v.apic_id for v in small + big]


def test_slit_with_gaps_in_node_ids_marks_missing_domains_unreachable(tmp_path: Path) -> None:
    from dataclasses import replace

    plan = make_plan("2s2c", numa=True)
    assert plan.numa is not None
    n0, n1 = plan.numa.nodes
    numa = replace(plan.numa, nodes=(n0, replace(n1, id=2)))
    vcpus = tuple(replace(v, node=2 if v.node == 1 else v.node) for v in plan.vcpus)
    blob = build_acpi(replace(plan, numa=numa, vcpus=vcpus))
    stext = disassemble(blob.table("SLIT"), tmp_path)
    rows = re.findall(r"Locality +\d+ : ([0-9A-F ]+)", stext)
    assert [[int(x, 16) for x in r.split()] for r in rows] == [
        [10, 255, 21],
        [255, 10, 255],
        [21, 255, 10],
    ]


@pytest.mark.parametrize(
    "matrix",
    [((10, 20), (20, 11)), ((10, 10), (10, 10)), ((10, 20), (20,)), ((10, 300), (300, 10))],
)
def test_slit_refuses_a_matrix_linux_would_ignore(matrix) -> None:
    with pytest.raises(ValueError, match="SLIT"):
        slit(matrix)


def test_rsdp_checksums_and_iasl_compiles_the_same_bytes(tmp_path: Path) -> None:
    """iasl cannot disassemble a raw RSDP, so compile one from its template and compare."""
    raw = rsdp(0x9FD20)
    assert len(raw) == 36 and raw[:8] == b"RSD PTR " and raw[15] == 2
    assert checksum(raw[:20]) == 0 and checksum(raw) == 0
    (tmp_path / "rsdp.asl").write_text(
        '[0008] Signature : "RSD PTR "\n[0001] Checksum : 00\n[0006] Oem ID : "SVLNCH"\n'
        "[0001] Revision : 02\n[0004] RSDT Address : 00000000\n[0004] Length : 00000024\n"
        "[0008] XSDT Address : 000000000009FD20\n[0001] Extended Checksum : 00\n"
        "[0003] Reserved : 000000\n"
    )
    run = subprocess.run(
        [IASL or "iasl", "rsdp.asl"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "rsdp.aml").read_bytes() == raw


def test_a_corrupted_table_is_caught_by_the_iasl_check(tmp_path: Path) -> None:
    """The helper the other tests rely on does fail on a bad checksum."""
    table = bytearray(build_acpi(make_plan("1cpu")).table("APIC"))
    table[9] ^= 1
    with pytest.raises(AssertionError, match="Incorrect checksum"):
        disassemble(bytes(table), tmp_path)
