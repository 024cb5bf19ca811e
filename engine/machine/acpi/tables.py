"""ACPI table builders: RSDP, XSDT, FADT, MADT, SRAT, SLIT. Pure: plain values in, bytes out.

Each builder takes only the facts its table states (APIC ids, node ranges, addresses), so it can be
tested without a plan or guest memory; ``builder.build_acpi`` maps a plan onto them and places the
results. Layouts are ACPI 6.5 §5.2 (choices: docs/engine.md, "ACPI"); the table sizes match what
``iasl -d`` expects (tests/unit/test_acpi_tables.py disassembles every table).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from engine.machine.acpi import pm
from engine.machine.acpi.sdt import NULL_GAS, OEM_ID, SPACE_IO, Gas, checksum, sdt

# -- RSDP / XSDT ----------------------------------------------------------------------------

RSDP_SIZE = 36


def rsdp(xsdt_addr: int) -> bytes:
    """RSDP revision 2 (ACPI 6.5 §5.2.5.3): points only at the XSDT (RSDT address 0)."""
    head = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, 0))
    head[8] = checksum(head)  # covers the first 20 bytes
    ext = bytearray(head + struct.pack("<IQB3x", RSDP_SIZE, xsdt_addr, 0))
    ext[32] = checksum(ext)  # covers all 36 bytes
    return bytes(ext)


def xsdt(table_addrs: Sequence[int]) -> bytes:
    """XSDT revision 1: the 64-bit addresses of every table but the DSDT (the FADT has it)."""
    return sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in table_addrs))


# -- FADT -----------------------------------------------------------------------------------

FADT_SIZE = 276
FADT_REVISION = 6
FADT_MINOR = 5

# Flags (ACPI 6.5 Table 5.10)
FADT_PWR_BUTTON = 1 << 4  # no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED = 1 << 20
# IA-PC boot architecture flags (Table 5.11). 8042 (bit 1) left clear: no PS/2 probe.
BOOT_VGA_NOT_PRESENT = 1 << 2
BOOT_CMOS_RTC_NOT_PRESENT = 1 << 5

HYPERVISOR_ID = b"SVLAUNCH"


def fadt(
    dsdt_addr: int, *, boot_arch: int = BOOT_VGA_NOT_PRESENT | BOOT_CMOS_RTC_NOT_PRESENT
) -> bytes:
    """FADT revision 6, HW-reduced, with the reset and sleep registers on ``pm.PM_PORT``.

    No CMOS RTC (ports 0x70/0x71) is emulated, and the flag says so: without it Linux registers
    ``rtc_cmos`` and polls the all-ones UIP bit for ~40 s of nested-rig time (guest wall time
    comes from kvm-clock instead).

    HW-reduced means no PM1/GPE blocks, no SCI, no legacy PIC: Linux then takes the reset
    register for reboot (``acpi_reboot``) and the sleep control register for poweroff.
    """
    reg = Gas(SPACE_IO, pm.PM_BIT_WIDTH, pm.PM_PORT).pack()
    body = bytearray(FADT_SIZE)
    flags = FADT_HW_REDUCED | FADT_RESET_REG_SUP | FADT_PWR_BUTTON | FADT_SLP_BUTTON
    struct.pack_into("<H", body, 109, boot_arch)
    struct.pack_into("<I", body, 112, flags)
    body[116:128] = reg  # RESET_REG
    body[128] = pm.RESET_VALUE
    body[131] = FADT_MINOR
    struct.pack_into("<Q", body, 140, dsdt_addr)  # X_DSDT (the 32-bit DSDT field stays 0)
    for off in range(148, 244, 12):  # X_PM1a_EVT .. X_GPE1: absent on HW-reduced
        body[off : off + 12] = NULL_GAS
    body[244:256] = reg  # SLEEP_CONTROL_REG
    body[256:268] = reg  # SLEEP_STATUS_REG
    body[268:276] = HYPERVISOR_ID
    return sdt(b"FACP", FADT_REVISION, bytes(body[36:]))


# -- MADT -----------------------------------------------------------------------------------

MADT_REVISION = 5
LAPIC_ENABLED = 1
#: The largest APIC id a type-0 Local APIC entry may carry; 0xFF means "broadcast".
MAX_XAPIC_ID = 0xFE


def madt(
    apic_ids: Sequence[int], *, lapic_addr: int, ioapic_addr: int, ioapic_id: int = 0
) -> bytes:
    """MADT: one enabled Local APIC entry per vCPU (x2APIC entry for ids > 254) and one IOAPIC.

    ``apic_ids[i]`` belongs to vCPU ``i`` (its ACPI processor UID is ``i``). Flags are 0: no
    8259 PIC (PCAT_COMPAT clear). No interrupt source override: with none, Linux maps ISA IRQs
    0-15 to GSIs 0-15 edge/active-high (``mp_config_acpi_legacy_irqs``), which is what our
    IOAPIC wiring is (COM1 on GSI 4); a HW-reduced guest does not set up the PIT timer path.
    """
    body = bytearray(struct.pack("<II", lapic_addr, 0))
    for uid, apic_id in enumerate(apic_ids):
        if apic_id <= MAX_XAPIC_ID and uid <= 0xFF:
            body += struct.pack("<BBBBI", 0, 8, uid, apic_id, LAPIC_ENABLED)
        else:
            body += struct.pack("<BBHIII", 9, 16, 0, apic_id, LAPIC_ENABLED, uid)
    body += struct.pack("<BBBBII", 1, 12, ioapic_id, 0, ioapic_addr, 0)
    return sdt(b"APIC", MADT_REVISION, bytes(body))


# -- SRAT / SLIT ----------------------------------------------------------------------------

SRAT_REVISION = 3
SLIT_REVISION = 1
MEM_ENABLED = 1
LOCAL_DISTANCE = 10


@dataclass(frozen=True, slots=True)
class CpuAffinity:
    """vCPU ``apic_id`` belongs to proximity domain ``node``."""

    apic_id: int
    node: int


@dataclass(frozen=True, slots=True)
class MemAffinity:
    """Guest-physical ``[base, base+size)`` belongs to proximity domain ``node``."""

    node: int
    base: int
    size: int


def srat(cpus: Sequence[CpuAffinity], memory: Sequence[MemAffinity]) -> bytes:
    """SRAT revision 3: a processor affinity entry per vCPU, a memory affinity entry per range.

    Processor entries are Local APIC affinity (type 0) for ids ≤ 254 and x2APIC affinity
    (type 2) above, matching the MADT entry kinds. Linux needs every vCPU listed and the
    memory ranges to cover all E820 RAM, or it ignores the SRAT (docs/engine.md, "ACPI").
    """
    body = bytearray(struct.pack("<I8x", 1))  # reserved: 1 for backward compatibility
    for c in cpus:
        if c.apic_id <= MAX_XAPIC_ID:
            pd = c.node
            body += struct.pack(
                "<BBBBIB3sI", 0, 16, pd & 0xFF, c.apic_id, 1, 0, (pd >> 8).to_bytes(3, "little"), 0
            )
        else:
            body += struct.pack("<BBHIIIII", 2, 24, 0, c.node, c.apic_id, 1, 0, 0)
    for m in memory:
        body += struct.pack("<BBIHQQIIQ", 1, 40, m.node, 0, m.base, m.size, 0, MEM_ENABLED, 0)
    return sdt(b"SRAT", SRAT_REVISION, bytes(body))


def slit(distances: Sequence[Sequence[int]]) -> bytes:
    """SLIT revision 1 from a full ``[src][dst]`` distance matrix.

    Linux ignores a SLIT whose diagonal is not 10 or whose other entries are not above 10
    (``slit_valid``); refuse such a matrix here rather than ship a table the guest drops.
    """
    n = len(distances)
    for i, row in enumerate(distances):
        if len(row) != n:
            raise ValueError(f"SLIT row {i} has {len(row)} entries, expected {n}")
        for j, d in enumerate(row):
            ok = d == LOCAL_DISTANCE if i == j else LOCAL_DISTANCE < d <= 0xFF
            if not ok:
                want = "10" if i == j else "11..255"
                raise ValueError(f"SLIT distance [{i}][{j}] = {d}, must be {want}")
    body = struct.pack("<Q", n) + bytes(d for row in distances for d in row)
    return sdt(b"SLIT", SLIT_REVISION, body)
