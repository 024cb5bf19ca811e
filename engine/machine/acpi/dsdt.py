"""The DSDT: COM1, one virtio-mmio device per window, and the S5 sleep package.

A direct-boot HW-reduced Linux learns about devices only from here (docs/engine.md, "ACPI"):
- ``LNRO0005`` is what drivers/virtio/virtio_mmio.c matches; its ``_CRS`` memory window and
  interrupt become the platform device's resources (no ``virtio_mmio.device=`` cmdline needed);
- COM1 (``PNP0501``) is listed so that its GSI 4 is registered through ACPI: with HW-reduced
  ACPI there is no legacy PIC and ISA IRQs are not pre-mapped;
- ``_S5_`` gives SLP_TYP for poweroff through the FADT sleep control register (``pm``);
- the power button: a Generic Event Device and ``PWRB`` (``ged``), for QMP system_powerdown;
- with a pvpanic device, ``PEVT`` (``_HID "QEMU0001"``, one I/O port), what Linux's pvpanic-mmio
  driver binds: the guest writes its panic there (``engine.machine.pvpanic``).
Everything sits under ``\\_SB``, as Firecracker does for COM1; iasl and Linux accept both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.machine.acpi import aml, pm
from engine.machine.acpi.ged import Ged, ged_aml
from engine.machine.acpi.sdt import sdt
from engine.machine.pvpanic import PVPANIC_HID

DSDT_REVISION = 2  # 64-bit AML integers


@dataclass(frozen=True, slots=True)
class MmioDevice:
    """A virtio-mmio window at ``[base, base+size)`` raising edge-triggered ``gsi``."""

    base: int
    size: int
    gsi: int


@dataclass(frozen=True, slots=True)
class Uart:
    """A 16550 at I/O ``port`` (8 registers) raising edge-triggered ``gsi``."""

    port: int
    gsi: int


def virtio_device(index: int, dev: MmioDevice) -> bytes:
    """``Device(Vnnn)`` with ``_HID "LNRO0005"``, ``_UID index``, coherent DMA and ``_CRS``."""
    return aml.device(
        f"V{index:03d}",
        aml.name("_HID", aml.string("LNRO0005")),
        aml.name("_UID", aml.integer(index)),
        aml.name("_CCA", aml.integer(1)),
        aml.name(
            "_CRS",
            aml.resource_template(
                aml.memory32_fixed(dev.base, dev.size), aml.interrupt(dev.gsi, edge=True)
            ),
        ),
    )


def uart_device(uart: Uart) -> bytes:
    """``Device(COM1)`` with ``_HID EisaId("PNP0501")`` and its I/O range and interrupt."""
    return aml.device(
        "COM1",
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", aml.integer(0)),
        aml.name(
            "_CRS",
            aml.resource_template(
                aml.io_port(uart.port, uart.port, 1, 8), aml.interrupt(uart.gsi, edge=True)
            ),
        ),
    )


def pvpanic_device(port: int) -> bytes:
    """``Device(PEVT)`` with ``_HID "QEMU0001"`` and its one I/O port, as QEMU's ISA pvpanic.

    QEMU adds an OperationRegion and RDPT/WRPT methods for its own firmware; Linux's driver
    uses only the ``_CRS`` resource (``platform_get_mem_or_io``), so this is all a guest needs.
    """
    return aml.device(
        "PEVT",
        aml.name("_HID", aml.string(PVPANIC_HID)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resource_template(aml.io_port(port, port, 1, 1))),
    )


def s5_package() -> bytes:
    """``Name(_S5_, Package(){5, 5, 0, 0})``: SLP_TYPa/SLP_TYPb for soft-off."""
    typ = aml.integer(pm.S5_SLP_TYP)
    return aml.name("_S5_", aml.package(typ, typ, aml.integer(0), aml.integer(0)))


def dsdt(
    uart: Uart | None,
    devices: Sequence[MmioDevice],
    ged: Ged | None = None,
    pvpanic_port: int | None = None,
) -> bytes:
    """The whole DSDT table (header + AML)."""
    sb = []
    if uart is not None:
        sb.append(uart_device(uart))
    sb += [virtio_device(i, d) for i, d in enumerate(devices)]
    if ged is not None:
        sb += ged_aml(ged)
    if pvpanic_port is not None:
        sb.append(pvpanic_device(pvpanic_port))
    body = aml.scope("\\_SB", *sb) + s5_package()
    return sdt(b"DSDT", DSDT_REVISION, body)
