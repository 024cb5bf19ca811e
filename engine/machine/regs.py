"""A vCPU's registers at the 64-bit Linux entry point (Firecracker's values; docs/boot.md).

Order matters and is kept by ``configure_vcpu``: CPUID is set by the caller *before* the MSRs
(KVM filters MSRs by the guest's CPUID), then MSRs, then regs/sregs/FPU, then the LAPIC LINT
pins. The boot GDT puts code at index 2 and data at index 3 (``__BOOT_CS=0x10``,
``__BOOT_DS=0x18``) as Documentation/arch/x86/boot.rst asks; CR0 is set outright to
PE|MP|ET|NE|WP|AM|PG so the reset value's CD|NW bits do not leak through.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from engine.machine import layout
from engine.machine.kvm import VcpuFd
from engine.machine.memory import GuestMemory

if TYPE_CHECKING:
    from typing import Any

# -- GDT ------------------------------------------------------------------------------------------


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """A 64-bit segment descriptor from Firecracker's (flags, base, limit) triple."""
    return (
        ((base & 0xFF00_0000) << (56 - 24))
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0x000F_0000) << (48 - 16))
        | ((base & 0x00FF_FFFF) << 16)
        | (limit & 0x0000_FFFF)
    )


CODE_SELECTOR = 0x10
DATA_SELECTOR = 0x18
TSS_SELECTOR = 0x20

#: null, unused, code (L=1, P, DPL0, type 0xb), data (P, DPL0, type 3, DB, G), TSS (type 0xb)
BOOT_GDT: tuple[int, ...] = (
    0,
    0,
    gdt_entry(0xA09B, 0, 0xFFFFF),
    gdt_entry(0xC093, 0, 0xFFFFF),
    gdt_entry(0x808B, 0, 0xFFFFF),
)


def segment_from_gdt(entry: int, index: int) -> dict[str, int]:
    """The ``kvm_segment`` fields a descriptor implies (limit scaled by G; unusable = !present)."""
    base = ((entry >> 16) & 0xFF_FFFF) | (((entry >> 56) & 0xFF) << 24)
    limit = (entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16)
    g = (entry >> 55) & 1
    present = (entry >> 47) & 1
    return {
        "base": base,
        "limit": (limit << 12) | 0xFFF if g else limit,
        "selector": index * 8,
        "type": (entry >> 40) & 0xF,
        "present": present,
        "dpl": (entry >> 45) & 3,
        "db": (entry >> 54) & 1,
        "s": (entry >> 44) & 1,
        "l": (entry >> 53) & 1,
        "g": g,
        "avl": (entry >> 52) & 1,
        "unusable": 0 if present else 1,
    }


# -- page tables ----------------------------------------------------------------------------------

X86_CR0_PE, X86_CR0_MP, X86_CR0_ET, X86_CR0_NE = 0x1, 0x2, 0x10, 0x20
X86_CR0_WP, X86_CR0_AM, X86_CR0_PG = 0x10000, 0x40000, 0x8000_0000
X86_CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400
BOOT_CR0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_AM | X86_CR0_PG


def write_boot_tables(mem: GuestMemory) -> None:
    """GDT, a null IDT, and page tables identity-mapping the first 1 GiB with 2 MiB pages."""
    mem.write(layout.BOOT_GDT_START, struct.pack(f"<{len(BOOT_GDT)}Q", *BOOT_GDT))
    mem.write_u64(layout.BOOT_IDT_START, 0)
    mem.write_u64(layout.PML4_START, layout.PDPTE_START | 0x03)
    mem.write_u64(layout.PDPTE_START, layout.PDE_START | 0x03)
    mem.write(layout.PDE_START, struct.pack("<512Q", *((i << 21) | 0x83 for i in range(512))))


def long_mode_sregs(sregs: Any) -> None:
    """Fill a ``kvm_sregs`` for 64-bit mode with the boot GDT's segments (in place)."""
    code = segment_from_gdt(BOOT_GDT[2], 2)
    data = segment_from_gdt(BOOT_GDT[3], 3)
    tss = segment_from_gdt(BOOT_GDT[4], 4)
    for name, value in code.items():
        setattr(sregs.cs, name, value)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        for name, value in data.items():
            setattr(seg, name, value)
    for name, value in tss.items():
        setattr(sregs.tr, name, value)
    sregs.gdt.base = layout.BOOT_GDT_START
    sregs.gdt.limit = len(BOOT_GDT) * 8 - 1
    sregs.idt.base = layout.BOOT_IDT_START
    sregs.idt.limit = 7
    sregs.cr3 = layout.PML4_START
    sregs.cr4 |= X86_CR4_PAE
    sregs.cr0 = BOOT_CR0
    sregs.efer |= EFER_LME | EFER_LMA


# -- MSRs -----------------------------------------------------------------------------------------

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_SYSCALL_MASK = 0xC000_0084
MSR_KERNEL_GS_BASE = 0xC000_0102
MISC_ENABLE_FAST_STRING = 1

BOOT_MSRS: tuple[tuple[int, int], ...] = (
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
)

# -- LAPIC ----------------------------------------------------------------------------------------

APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7


def set_lint_modes(lapic: bytearray) -> bytearray:
    """LVT0 = ExtINT, LVT1 = NMI (delivery-mode bits 8..10 only), as Firecracker's ``set_lint``."""
    for reg, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        value = struct.unpack_from("<I", lapic, reg)[0]
        struct.pack_into("<I", lapic, reg, (value & ~0x700) | (mode << 8))
    return lapic


# -- one vCPU -------------------------------------------------------------------------------------


def configure_vcpu(vcpu: VcpuFd, entry: int, *, boot_params: int = layout.ZERO_PAGE_START) -> None:
    """Registers for the 64-bit boot protocol. Call after KVM_SET_CPUID2 (MSRs are filtered by it).

    1. MSRs; 2. general registers (rip=entry, rsi=zero page, stack); 3. special registers
    (long mode); 4. FPU control words; 5. LAPIC LINT0/LINT1 delivery modes.
    """
    vcpu.set_msrs(BOOT_MSRS)
    regs = vcpu.get_regs()
    regs.rflags = 0x2
    regs.rip = entry
    regs.rsp = regs.rbp = layout.BOOT_STACK_POINTER
    regs.rsi = boot_params
    vcpu.set_regs(regs)
    sregs = vcpu.get_sregs()
    long_mode_sregs(sregs)
    vcpu.set_sregs(sregs)
    fpu = vcpu.get_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)
    vcpu.set_lapic(set_lint_modes(vcpu.get_lapic()))
