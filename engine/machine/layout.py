"""The x86_64 guest physical layout: the only module that names guest addresses and IRQs.

Two kinds of fact live here (Firecracker's ``arch/x86_64/layout.rs`` is the model):

- what the compiler writes into a plan: where RAM, the 32-bit MMIO hole and the virtio-mmio
  windows sit, and which GSI each device gets (``launcher.compile`` reads these);
- what the engine places at boot: GDT, IDT, zero page, boot stack, identity page tables, command
  line, the E820-reserved system-data region for ACPI, and the KVM TSS/identity-map pages inside
  the MMIO hole (docs/engine.md, "Guest physical layout"; docs/boot.md, "Boot data").

It imports nothing, so the pure compile side can use it without loading the engine.
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
#: The pvpanic device's one I/O port (QEMU's ISA pvpanic default; engine.machine.pvpanic).
PVPANIC_PORT = 0x505
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


# -- boot-time addresses (the engine's) ----------------------------------------------------------

PAGE_SIZE = 0x1000

BOOT_GDT_START = 0x500
BOOT_IDT_START = 0x520
ZERO_PAGE_START = 0x7000
BOOT_STACK_POINTER = 0x8FF0
PML4_START = 0x9000
PDPTE_START = 0xA000
PDE_START = 0xB000
CMDLINE_START = 0x20000
CMDLINE_MAX_SIZE = 2048

#: [0x9fc00, 0xe0000) holds the ACPI tables; E820 reports it reserved. RSDP sits at its end.
EBDA_START = 0x9FC00
SYSTEM_MEM_START = EBDA_START
RSDP_ADDR = 0xE0000
SYSTEM_MEM_SIZE = RSDP_ADDR - SYSTEM_MEM_START
#: the ISA BIOS area up to 1 MiB is not RAM for the guest
HIMEM_START = 0x100000

#: KVM needs three pages for the VMX real-mode TSS and one for the EPT identity map (below 4 GiB,
#: inside the hole, clear of IOAPIC/LAPIC). Accepted and unused on PVM.
KVM_TSS_START = 0xFFFB_D000
KVM_IDENTITY_MAP_START = 0xFFFB_C000
