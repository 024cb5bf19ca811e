"""build_acpi places the tables where a guest looks for them, and they link up as a guest walks them."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from acpi_plans import make_plan

from engine.machine import layout
from engine.machine.acpi import pm
from engine.machine.acpi.builder import TABLE_ALIGN, build_acpi
from engine.machine.layout import MAX_MMIO_DEVICES
from engine.machine.memory import GuestMemory
from launcher.errors import EngineError


def _walk(mem: GuestMemory, rsdp_addr: int) -> dict[str, bytes]:
    """Follow RSDP -> XSDT -> tables (and FADT -> DSDT) the way ACPICA does, checking checksums."""
    rsdp = mem.read(rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]

    def table(addr: int) -> bytes:
        length = mem.read_u32(addr + 4)
        data = mem.read(addr, length)
        assert sum(data) % 256 == 0, data[:4]
        return data

    xsdt = table(xsdt_addr)
    assert xsdt[:4] == b"XSDT"
    out = {"XSDT": xsdt}
    for (addr,) in struct.iter_unpack("<Q", xsdt[36:]):
        t = table(addr)
        out[t[:4].decode()] = t
    out["DSDT"] = table(struct.unpack_from("<Q", out["FACP"], 140)[0])
    return out


@pytest.mark.parametrize(
    "plan",
    [
        make_plan("1cpu"),
        make_plan("2s2c", numa=True, devices=4),
        make_plan("x2apic", devices=MAX_MMIO_DEVICES),
    ],
    ids=["1cpu", "numa", "x2apic-maxdev"],
)
def test_guest_finds_every_table_from_the_rsdp(plan) -> None:
    blob = build_acpi(plan)
    assert blob.rsdp_addr == layout.RSDP_ADDR == 0xE0000
    assert blob.tables_addr == layout.SYSTEM_MEM_START == 0x9FC00
    assert blob.tables_addr + len(blob.tables) <= layout.RSDP_ADDR
    for ref in blob.index:
        assert ref.addr % TABLE_ALIGN == 0
    mem = GuestMemory.anonymous([(0, 2 << 20)])
    try:
        blob.write(mem)
        tables = _walk(mem, blob.rsdp_addr)
    finally:
        mem.close()
    want = {"XSDT", "FACP", "APIC", "DSDT"} | ({"SRAT", "SLIT"} if plan.numa else set())
    assert set(tables) == want
    for sig, data in tables.items():
        assert data == blob.table(sig)


def test_build_is_deterministic() -> None:
    plan = make_plan("all-levels", numa=True, devices=7)
    assert build_acpi(plan) == build_acpi(plan)


def test_tables_that_do_not_fit_raise_an_engine_error() -> None:
    plan = make_plan("x2apic", devices=MAX_MMIO_DEVICES)
    with pytest.raises(EngineError, match="system-data region") as e:
        build_acpi(plan, limit=layout.SYSTEM_MEM_START + 1024)
    assert e.value.hint


def test_bad_distance_matrix_is_an_engine_error_not_a_traceback() -> None:
    plan = make_plan("2s2c", numa=True)
    assert plan.numa is not None
    bad = replace(plan, numa=replace(plan.numa, distances=((10, 5), (5, 10))))
    with pytest.raises(EngineError, match=r"distance .*\[0\]\[1\] = 5"):
        build_acpi(bad)


def test_vcpu_without_node_goes_to_the_first_node_in_the_srat() -> None:
    plan = make_plan("2s2c", numa=True)
    vcpus = tuple(replace(v, node=None) if v.index == 3 else v for v in plan.vcpus)
    srat = build_acpi(replace(plan, vcpus=vcpus)).table("SRAT")
    # 4 LAPIC affinity entries (16 bytes each) after the 48-byte header+reserved.
    domains = [srat[48 + 16 * i + 2] for i in range(4)]
    assert domains == [0, 0, 1, 0]


@pytest.mark.parametrize(
    ("value", "action"),
    [
        (pm.RESET_VALUE, pm.PmAction.RESET),
        (pm.POWEROFF_VALUE, pm.PmAction.POWEROFF),
        (0x34, pm.PmAction.POWEROFF),  # what ACPICA writes for _S5_ = 5
        (pm.WAK_STS, None),  # ACPICA clears wake status first: ignore
        ((3 << 2) | pm.SLP_EN, None),  # S3 is not offered
        (5 << 2, None),  # SLP_TYP without SLP_EN
        (0, None),
        (0xFF, None),
    ],
)
def test_pm_register_writes(value: int, action: pm.PmAction | None) -> None:
    assert pm.pm_action(value) is action
