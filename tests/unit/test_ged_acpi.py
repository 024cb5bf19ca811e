"""The power button's AML (Generic Event Device + PWRB), as ``iasl -d`` reads it back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from acpi_plans import disassemble, make_plan, needs_iasl, roundtrip, same_but_creator

from engine.machine import layout
from engine.machine.acpi import aml, ged, pm
from engine.machine.acpi.builder import build_acpi
from engine.machine.acpi.dsdt import dsdt
from engine.machine.acpi.sdt import sdt

pytestmark = needs_iasl


def device_body(text: str, name: str) -> str:
    m = re.search(rf"Device \({name}\)\s*\{{(.*?)\n        \}}", text, re.S)
    assert m, f"no Device ({name}) in\n{text}"
    return m.group(1)


@pytest.mark.parametrize("ndev", [0, 3, layout.MAX_MMIO_DEVICES])
def test_dsdt_has_the_power_button_and_its_ged(ndev: int, tmp_path: Path) -> None:
    plan = make_plan("2s2c", devices=ndev)
    table = build_acpi(plan).table("DSDT")
    text = disassemble(table, tmp_path)
    pwrb = device_body(text, "PWRB")
    assert 'Name (_HID, EisaId ("PNP0C0C")' in pwrb
    body = device_body(text, "GED0")
    assert 'Name (_HID, "ACPI0013"' in body
    irq = re.search(
        r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x([0-9A-F]+),",
        body,
    )
    assert irq and int(irq.group(1), 16) == layout.GED_IRQ
    assert f"OperationRegion (GDST, SystemIO, 0x{layout.GED_PORT:04X}, One)" in body
    assert re.search(r"Field \(GDST, ByteAcc, NoLock, Preserve\)\s*\{\s*GDAT,\s+8\s*\}", body)
    evt = re.search(r"Method \(_EVT, 1, Serialized\).*?\{(.*)\}", body, re.S)
    assert evt, body
    lines = [ln.split("//")[0].split("/*")[0].strip() for ln in evt.group(1).splitlines()]
    assert [ln for ln in lines if ln] == [
        "Local0 = GDAT",
        "If ((Local0 & One))",
        "{",
        "Notify (\\_SB.PWRB, 0x80)",
        "}",
    ]
    # iasl compiles the disassembly back to the same bytes: no field was read differently.
    assert same_but_creator(table, roundtrip(table, tmp_path))


def test_ged_irq_and_port_are_nobody_elses() -> None:
    plan = make_plan("2s2c", devices=layout.MAX_MMIO_DEVICES)
    irqs = [d.irq for d in plan.devices]
    assert plan.serial is not None
    assert layout.GED_IRQ not in [*irqs, plan.serial.irq]
    assert layout.DEVICE_IRQ_FIRST <= layout.GED_IRQ <= layout.DEVICE_IRQ_LAST
    assert max(irqs) < layout.GED_IRQ
    with pytest.raises(ValueError):
        layout.virtio_mmio_slot(layout.MAX_MMIO_DEVICES)
    ged_end = layout.GED_PORT + layout.GED_PORT_SIZE
    for base, length in [(pm.PM_PORT, 1), (plan.serial.port, 8)]:
        assert base + length <= layout.GED_PORT or ged_end <= base, hex(base)


def test_evt_tests_the_power_button_bit_of_the_register() -> None:
    """Encoding of the method body: Store(GDAT, Local0); If(And(Local0, 1)) Notify(PWRB, 0x80)."""
    dev = ged.ged_device(ged.Ged(0x610, 23))
    store = bytes((0x70,)) + b"GDAT" + bytes((0x60,))
    cond = bytes((0x7B, 0x60, 0x01, 0x00))
    notify = bytes((0x86, 0x5C, 0x2E)) + b"_SB_PWRB" + bytes((0x0A, 0x80))
    assert store + bytes((0xA0, 1 + len(cond) + len(notify))) + cond + notify in dev
    assert bytes((0x5B, 0x80)) + b"GDST" + bytes((0x01, 0x0B, 0x10, 0x06, 0x01)) in dev


@pytest.mark.parametrize("bits", [1, 8, 62, 63, 64, 4093, 4094, 4096, 1 << 20])
def test_field_widths_roundtrip_through_iasl(bits: int, tmp_path: Path) -> None:
    """NamedField widths use PkgLength encoding without counting themselves (not ``pkg_length``)."""
    region = ged.operation_region("REG0", 0, 0xD000_0000, 0x100000)  # SystemMemory, 1 MiB
    fld = ged.field("REG0", ged.ACCESS_BYTE, ("FLD0", bits))
    body = aml.scope("\\_SB", region, fld)
    table = sdt(b"DSDT", 2, body)
    text = disassemble(table, tmp_path)
    m = re.search(r"FLD0,\s+(\d+)", text)
    assert m and int(m.group(1)) == bits, text
    assert same_but_creator(table, roundtrip(table, tmp_path))


def test_bad_ged_values_are_refused() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        ged.ged_device(ged.Ged(0x10000, 23))
    with pytest.raises(ValueError, match="at most 7"):
        ged.method("_EVT", 8)
    with pytest.raises(ValueError, match="bits"):
        ged.field("REG0", ged.ACCESS_BYTE, ("FLD0", 0))


def test_dsdt_without_a_ged_has_no_power_button(tmp_path: Path) -> None:
    text = disassemble(dsdt(None, []), tmp_path)
    assert "ACPI0013" not in text and "PNP0C0C" not in text
