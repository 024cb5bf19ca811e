"""The x86_64 guest physical layout a plan is compiled against.

This is the only module that decides where RAM, the 32-bit MMIO hole and the virtio-mmio
windows sit, and which IRQ each device gets. The compiler writes these into the plan; the engine
reads them from the plan (and its boot-time addresses live in ``engine/machine/layout.py``).
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: RAM starts at guest physical 0; RAM beyond the hole's start continues at 4 GiB.
RAM_START = 0
#: 32-bit MMIO hole [3 GiB, 4 GiB): virtio-mmio windows, IOAPIC, LAPIC, TSS live here.
MMIO32_START = 0xC000_0000
MMIO32_SIZE = 4 * GiB - MMIO32_START
HIGH_RAM_START = 4 * GiB

#: virtio-mmio device windows: one 4 KiB page each, from the start of the hole.
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_STRIDE = 0x1000
VIRTIO_MMIO_SIZE = 0x200

#: Legacy GSIs for devices (IOAPIC pins 5..23), as Firecracker: 4 is COM1.
SERIAL_IRQ = 4
SERIAL_PORT = 0x3F8
DEVICE_IRQ_FIRST = 5
DEVICE_IRQ_LAST = 23

#: The ACPI Generic Event Device (``ACPI0013``, the power button of a HW-reduced guest): a
#: one-byte event-status register at this I/O port and an edge-triggered GSI. A port, not an
#: MMIO window, so any guest reaches it without mapping the hole (next to the FADT PM port
#: 0x600). Its GSI is the last of the device pool, so virtio slot ``i`` keeps GSI ``5 + i``.
GED_PORT = 0x610
GED_PORT_SIZE = 1
GED_IRQ = DEVICE_IRQ_LAST
#: virtio-mmio slots: GSIs 5..22 (23 is the GED's).
MAX_MMIO_DEVICES = GED_IRQ - DEVICE_IRQ_FIRST

IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000


def ram_ranges(size: int) -> list[tuple[int, int]]:
    """Guest RAM ``(start, size)`` ranges for ``size`` bytes, skipping the 32-bit MMIO hole."""
    if size <= MMIO32_START:
        return [(RAM_START, size)]
    return [(RAM_START, MMIO32_START), (HIGH_RAM_START, size - MMIO32_START)]


def guest_ranges(start: int, size: int) -> list[tuple[int, int]]:
    """Split the guest-RAM byte interval ``[start, start+size)`` (RAM offsets) into physical ranges.

    NUMA nodes are laid out back to back in RAM order; a node that straddles the hole gets two
    physical ranges.
    """
    out: list[tuple[int, int]] = []
    end = start + size
    if start < MMIO32_START:
        low_end = min(end, MMIO32_START)
        out.append((start, low_end - start))
    if end > MMIO32_START:
        hi_start = max(start, MMIO32_START)
        out.append((hi_start - MMIO32_START + HIGH_RAM_START, end - hi_start))
    return out


def virtio_mmio_slot(index: int) -> tuple[int, int]:
    """MMIO base and GSI of the ``index``-th virtio-mmio device (0-based)."""
    if not 0 <= index < MAX_MMIO_DEVICES:
        raise ValueError(f"virtio-mmio slot {index} out of range (0..{MAX_MMIO_DEVICES - 1})")
    return VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_STRIDE, DEVICE_IRQ_FIRST + index
