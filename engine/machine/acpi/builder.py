"""``build_acpi(plan) -> AcpiBlob``: every ACPI table for a plan, placed at guest addresses.

The tables go back to back (8-byte aligned) from ``layout.SYSTEM_MEM_START`` (0x9fc00, the
E820-reserved system-data region that ends at 0xe0000) in the order DSDT, FACP, APIC, [SRAT,
SLIT,] XSDT; the RSDP goes at ``layout.RSDP_ADDR`` (0xe0000), where ACPICA's legacy scan finds
it even without ``boot_params.acpi_rsdp_addr`` (docs/engine.md, "ACPI"; Firecracker's placement).
The result is plain bytes and addresses, so the builder stays pure; ``AcpiBlob.write(mem)`` is
the one step that touches guest memory, through the bounds-checked ``GuestMemory``.

The engine must also: report [SYSTEM_MEM_START, 1 MiB) as E820 reserved, put ``rsdp_addr`` in
``boot_params.acpi_rsdp_addr``, create vCPU ``i`` with id ``plan.vcpus[i].apic_id``, and answer
the FADT's reset/sleep register (``engine.machine.acpi.pm``), the power button's GED
register and GSI (``engine.machine.ged``) and, when the plan has one, the pvpanic port
(``engine.machine.pvpanic``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.machine import layout
from engine.machine.acpi.dsdt import MmioDevice, Uart, dsdt
from engine.machine.acpi.ged import Ged
from engine.machine.acpi.tables import (
    CpuAffinity,
    MemAffinity,
    fadt,
    madt,
    rsdp,
    slit,
    srat,
    xsdt,
)
from engine.machine.layout import GED_IRQ, GED_PORT, PVPANIC_PORT, VIRTIO_MMIO_SIZE
from engine.plan import Plan

if TYPE_CHECKING:
    from engine.machine.memory import GuestMemory

TABLE_ALIGN = 8
#: SLIT distance between a proximity domain the plan names and one it skips (ACPI: unreachable).
UNREACHABLE = 0xFF


@dataclass(frozen=True, slots=True)
class TableRef:
    """Where one table landed: its signature, guest address and length."""

    signature: str
    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class AcpiBlob:
    """The tables image and the RSDP, with the guest addresses they belong at."""

    tables_addr: int  # write ``tables`` here (the system-data region's start)
    tables: bytes
    rsdp_addr: int  # write ``rsdp`` here; also goes in boot_params.acpi_rsdp_addr
    rsdp: bytes
    index: tuple[TableRef, ...]  # every table but the RSDP, in address order

    def table(self, signature: str) -> bytes:
        """The bytes of the table named ``signature`` (``"APIC"``, ``"DSDT"``...)."""
        for ref in self.index:
            if ref.signature == signature:
                off = ref.addr - self.tables_addr
                return self.tables[off : off + ref.length]
        raise KeyError(signature)

    def write(self, mem: GuestMemory) -> None:
        """Copy both pieces into guest memory (bounds-checked by ``GuestMemory``)."""
        mem.write(self.tables_addr, self.tables)
        mem.write(self.rsdp_addr, self.rsdp)


def _align(n: int) -> int:
    return (n + TABLE_ALIGN - 1) & ~(TABLE_ALIGN - 1)


def build_acpi(
    plan: Plan,
    *,
    base: int = layout.SYSTEM_MEM_START,
    limit: int = layout.RSDP_ADDR,
    rsdp_addr: int = layout.RSDP_ADDR,
) -> AcpiBlob:
    """Build and place every table the plan needs; raise ``EngineError`` if they do not fit."""
    vcpus = sorted(plan.vcpus, key=lambda v: v.index)
    image = bytearray()
    index: list[TableRef] = []

    def place(table: bytes) -> int:
        image.extend(bytes(_align(len(image)) - len(image)))
        addr = base + len(image)
        image.extend(table)
        index.append(TableRef(table[:4].decode("ascii"), addr, len(table)))
        return addr

    uart = Uart(plan.serial.port, plan.serial.irq) if plan.serial is not None else None
    devices = [MmioDevice(d.mmio_base, VIRTIO_MMIO_SIZE, d.irq) for d in plan.devices]
    pvpanic = PVPANIC_PORT if plan.pvpanic is not None else None
    dsdt_addr = place(dsdt(uart, devices, Ged(GED_PORT, GED_IRQ), pvpanic))
    listed = [place(fadt(dsdt_addr))]
    listed.append(
        place(
            madt(
                [v.apic_id for v in vcpus],
                lapic_addr=layout.LAPIC_ADDR,
                ioapic_addr=layout.IOAPIC_ADDR,
            )
        )
    )
    if plan.numa is not None and plan.numa.nodes:
        listed += _numa_tables(plan, place)
    place(xsdt(listed))
    xsdt_addr = index[-1].addr
    if base + len(image) > limit:
        raise EngineError(
            f"ACPI tables need {len(image)} bytes but the system-data region "
            f"[{base:#x}, {limit:#x}) holds {limit - base}",
            hint="use fewer vCPUs, NUMA nodes or devices",
        )
    return AcpiBlob(base, bytes(image), rsdp_addr, rsdp(xsdt_addr), tuple(index))


def _numa_tables(plan: Plan, place: Callable[[bytes], int]) -> list[int]:
    """SRAT and SLIT for a NUMA plan.

    A vCPU the plan leaves without a node goes to the first node (Linux wants every CPU in the
    SRAT). The plan's matrix is indexed by position in ``numa.nodes`` (sorted ids); the SLIT is
    indexed by proximity domain, so node ids with gaps get "unreachable" rows for the gaps.
    """
    assert plan.numa is not None
    nodes = plan.numa.nodes
    default = nodes[0].id
    cpus = [
        CpuAffinity(v.apic_id, v.node if v.node is not None else default)
        for v in sorted(plan.vcpus, key=lambda v: v.index)
    ]
    memory = [MemAffinity(n.id, addr, size) for n in nodes for addr, size in n.ranges if size > 0]
    pos = {n.id: i for i, n in enumerate(nodes)}
    size = max(pos) + 1
    matrix = [
        [
            plan.numa.distances[pos[a]][pos[b]]
            if a in pos and b in pos
            else (10 if a == b else UNREACHABLE)
            for b in range(size)
        ]
        for a in range(size)
    ]
    try:
        slit_table = slit(matrix)
    except (ValueError, IndexError) as e:
        raise EngineError(
            f"NUMA distance matrix rejected: {e}",
            hint="local distance must be 10 and remote distances 11..255",
        ) from None
    return [place(srat(cpus, memory)), place(slit_table)]
