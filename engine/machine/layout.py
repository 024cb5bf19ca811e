"""Boot-time guest physical addresses (Firecracker's layout, engine-notes §1.2).

RAM, the 32-bit MMIO hole, IOAPIC/LAPIC and virtio windows are decided by the compiler
(``launcher.compile.layout``, re-exported here); this module adds only what the engine places at
boot: GDT, IDT, zero page, boot stack, identity page tables, command line, the E820-reserved
system-data region for ACPI, and the KVM TSS/identity-map pages inside the MMIO hole.
"""

from __future__ import annotations

from launcher.compile.layout import (  # re-exported: one source of truth
    HIGH_RAM_START,
    IOAPIC_ADDR,
    LAPIC_ADDR,
    MMIO32_SIZE,
    MMIO32_START,
    SERIAL_IRQ,
    SERIAL_PORT,
)

__all__ = [
    "BOOT_GDT_START",
    "BOOT_IDT_START",
    "BOOT_STACK_POINTER",
    "CMDLINE_MAX_SIZE",
    "CMDLINE_START",
    "EBDA_START",
    "HIGH_RAM_START",
    "HIMEM_START",
    "IOAPIC_ADDR",
    "KVM_IDENTITY_MAP_START",
    "KVM_TSS_START",
    "LAPIC_ADDR",
    "MMIO32_SIZE",
    "MMIO32_START",
    "PAGE_SIZE",
    "PDE_START",
    "PDPTE_START",
    "PML4_START",
    "RSDP_ADDR",
    "SERIAL_IRQ",
    "SERIAL_PORT",
    "SYSTEM_MEM_SIZE",
    "SYSTEM_MEM_START",
    "ZERO_PAGE_START",
]

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
