"""The KVM ABI: C struct declarations (cffi, ABI mode) and ioctl numbers, declared once.

Why cffi and not ``fcntl.ioctl``: ``fcntl`` parses int arguments as C ``int`` (KVM_SET_TSS_ADDR
0xfffbd000 overflows), refuses immutable buffers over 1024 bytes, and CPython 3.14 retries ioctl on
EINTR, which would break the vCPU kick (docs/engine.md, "KVM from Python"). cffi calls drop the GIL
and return -1/EINTR once. Struct layouts are from ``include/uapi/linux/kvm.h`` and ``asm/kvm.h``
(x86_64); ioctl numbers are computed from the struct sizes exactly as ``_IOC`` does, and a test pins
them to the values verified on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


#: The C declarations (x86_64). ``_kvm_ffi.py`` is generated from them (out-of-line ABI mode) so
#: that importing the engine does not parse C (docs/performance.md, "Start-up").
CDEF = """
    int ioctl(int fd, unsigned long request, ...);
    long mbind(void *addr, unsigned long len, int mode, const unsigned long *nodemask,
               unsigned long maxnode, unsigned int flags);
    long syscall(long number, ...);
    int madvise(void *addr, size_t length, int advice);

    struct kvm_userspace_memory_region {
        uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size;
        uint64_t userspace_addr;
    };
    struct kvm_regs {
        uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
        uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
        uint64_t rip, rflags;
    };
    struct kvm_segment {
        uint64_t base; uint32_t limit; uint16_t selector;
        uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
    };
    struct kvm_dtable { uint64_t base; uint16_t limit; uint16_t padding[3]; };
    struct kvm_sregs {
        struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
        struct kvm_dtable gdt, idt;
        uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
        uint64_t interrupt_bitmap[4];
    };
    struct kvm_fpu {
        uint8_t fpr[8][16]; uint16_t fcw; uint16_t fsw; uint8_t ftwx; uint8_t pad1;
        uint16_t last_opcode; uint64_t last_ip; uint64_t last_dp;
        uint8_t xmm[16][16]; uint32_t mxcsr; uint32_t pad2;
    };
    struct kvm_msr_entry { uint32_t index; uint32_t reserved; uint64_t data; };
    struct kvm_msrs { uint32_t nmsrs; uint32_t pad; struct kvm_msr_entry entries[]; };
    struct kvm_cpuid_entry2 {
        uint32_t function, index, flags, eax, ebx, ecx, edx; uint32_t padding[3];
    };
    struct kvm_cpuid2 { uint32_t nent; uint32_t padding; struct kvm_cpuid_entry2 entries[]; };
    struct kvm_lapic_state { uint8_t regs[1024]; };
    struct kvm_pit_config { uint32_t flags; uint32_t pad[15]; };
    struct kvm_irqfd { uint32_t fd, gsi, flags, resamplefd; uint8_t pad[16]; };
    struct kvm_ioeventfd {
        uint64_t datamatch; uint64_t addr; uint32_t len; int32_t fd; uint32_t flags;
        uint8_t pad[36];
    };
    struct kvm_irq_level { uint32_t irq; uint32_t level; };
    struct kvm_mp_state { uint32_t mp_state; };

    struct kvm_msr_list { uint32_t nmsrs; uint32_t indices[]; };
    struct kvm_xsave { uint32_t region[1024]; };
    struct kvm_xcr { uint32_t xcr; uint32_t reserved; uint64_t value; };
    struct kvm_xcrs {
        uint32_t nr_xcrs; uint32_t flags; struct kvm_xcr xcrs[16]; uint64_t padding[16];
    };
    struct kvm_debugregs {
        uint64_t db[4]; uint64_t dr6; uint64_t dr7; uint64_t flags; uint64_t reserved[9];
    };
    struct kvm_vcpu_events_exception {
        uint8_t injected; uint8_t nr; uint8_t has_error_code; uint8_t pending;
        uint32_t error_code;
    };
    struct kvm_vcpu_events_interrupt { uint8_t injected; uint8_t nr; uint8_t soft; uint8_t shadow; };
    struct kvm_vcpu_events_nmi { uint8_t injected; uint8_t pending; uint8_t masked; uint8_t pad; };
    struct kvm_vcpu_events_smi {
        uint8_t smm; uint8_t pending; uint8_t smm_inside_nmi; uint8_t latched_init;
    };
    struct kvm_vcpu_events {
        struct kvm_vcpu_events_exception exception;
        struct kvm_vcpu_events_interrupt interrupt;
        struct kvm_vcpu_events_nmi nmi;
        uint32_t sipi_vector; uint32_t flags;
        struct kvm_vcpu_events_smi smi;
        uint8_t triple_fault_pending; uint8_t reserved[26]; uint8_t exception_has_payload;
        uint64_t exception_payload;
    };
    struct kvm_pic_state {
        uint8_t last_irr, irr, imr, isr, priority_add, irq_base, read_reg_select, poll;
        uint8_t special_mask, init_state, auto_eoi, rotate_on_auto_eoi;
        uint8_t special_fully_nested_mode, init4, elcr, elcr_mask;
    };
    struct kvm_ioapic_state {
        uint64_t base_address; uint32_t ioregsel; uint32_t id; uint32_t irr; uint32_t pad;
        uint64_t redirtbl[24];
    };
    struct kvm_irqchip {
        uint32_t chip_id; uint32_t pad;
        union { uint8_t dummy[512]; struct kvm_pic_state pic; struct kvm_ioapic_state ioapic; } chip;
    };
    struct kvm_pit_channel_state {
        uint32_t count; uint16_t latched_count; uint8_t count_latched; uint8_t status_latched;
        uint8_t status; uint8_t read_state; uint8_t write_state; uint8_t write_latch;
        uint8_t rw_mode; uint8_t mode; uint8_t bcd; uint8_t gate; int64_t count_load_time;
    };
    struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3]; uint32_t flags; uint32_t reserved[9]; };
    struct kvm_clock_data {
        uint64_t clock; uint32_t flags; uint32_t pad0; uint64_t realtime; uint64_t host_tsc;
        uint32_t pad[4];
    };

    struct kvm_exit_io { uint8_t direction; uint8_t size; uint16_t port; uint32_t count;
                         uint64_t data_offset; };
    struct kvm_exit_mmio { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; };
    struct kvm_exit_fail_entry { uint64_t hardware_entry_failure_reason; uint32_t cpu; };
    struct kvm_exit_internal { uint32_t suberror; uint32_t ndata; uint64_t data[16]; };
    struct kvm_exit_emulation_failure { uint32_t suberror; uint32_t ndata; uint64_t flags;
                                        uint8_t insn_size; uint8_t insn_bytes[15]; };
    struct kvm_exit_system_event { uint32_t type; uint32_t ndata; uint64_t data[16]; };
    struct kvm_run {
        uint8_t request_interrupt_window; uint8_t immediate_exit; uint8_t padding1[6];
        uint32_t exit_reason; uint8_t ready_for_interrupt_injection; uint8_t if_flag;
        uint16_t flags; uint64_t cr8; uint64_t apic_base;
        union {
            struct kvm_exit_io io;
            struct kvm_exit_mmio mmio;
            struct kvm_exit_fail_entry fail_entry;
            struct kvm_exit_internal internal;
            struct kvm_exit_emulation_failure emulation_failure;
            struct kvm_exit_system_event system_event;
            uint8_t padding[256];
        };
    };
"""

FFI_MODULE = "engine.machine._kvm_ffi"
FFI_HEADER = "# ruff: noqa\n# fmt: off\n# Generated from engine/machine/kvm_sys.py CDEF: python -m engine.machine.kvm_sys\n"


def build_ffi(*, out_of_line: bool = False) -> Any:
    """A cffi ``FFI`` parsed from ``CDEF`` (the slow path; also what generates ``_kvm_ffi``)."""
    from engine import cffi_gen

    return cffi_gen.build_ffi(CDEF, FFI_MODULE if out_of_line else None)


def write_ffi_module(path: str) -> None:
    """Regenerate ``_kvm_ffi.py`` (``python -m engine.machine.kvm_sys``) after editing ``CDEF``."""
    from engine import cffi_gen

    cffi_gen.write_ffi_module(CDEF, FFI_MODULE, FFI_HEADER, path)


try:  # the pre-built FFI: no C parsing at start-up
    from engine.machine._kvm_ffi import ffi
except ImportError:  # pragma: no cover - only when the generated module is missing
    ffi = build_ffi()

#: libc, for ioctl/mbind/madvise. ``dlopen(None)`` is the process's own C library.
libc = ffi.dlopen(None)

# -- _IOC -----------------------------------------------------------------------------------------

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, ctype: str) -> int:
    return _ioc(_IOC_WRITE, nr, ffi.sizeof(ctype))


def _ior(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ, nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ffi.sizeof(ctype))


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, "struct kvm_cpuid2")
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, "uint64_t")
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, "struct kvm_irq_level")
KVM_IRQFD = _iow(0x76, "struct kvm_irqfd")
KVM_CREATE_PIT2 = _iow(0x77, "struct kvm_pit_config")
KVM_IOEVENTFD = _iow(0x79, "struct kvm_ioeventfd")
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(0x84, "struct kvm_sregs")
KVM_GET_MSRS = _iowr(0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(0x89, "struct kvm_msrs")
KVM_GET_FPU = _ior(0x8C, "struct kvm_fpu")
KVM_SET_FPU = _iow(0x8D, "struct kvm_fpu")
KVM_GET_LAPIC = _ior(0x8E, "struct kvm_lapic_state")
KVM_SET_LAPIC = _iow(0x8F, "struct kvm_lapic_state")
KVM_SET_CPUID2 = _iow(0x90, "struct kvm_cpuid2")
KVM_GET_MP_STATE = _ior(0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(0x99, "struct kvm_mp_state")
#: struct kvm_coalesced_mmio_zone { __u64 addr; __u32 size; __u32 pio; }, packed by hand
COALESCED_ZONE_SIZE = 16
KVM_REGISTER_COALESCED_MMIO = _ioc(_IOC_WRITE, 0x67, COALESCED_ZONE_SIZE)
KVM_UNREGISTER_COALESCED_MMIO = _ioc(_IOC_WRITE, 0x68, COALESCED_ZONE_SIZE)
# snapshot and restore (engine/snapshot/): VM-wide and per-vCPU state the guest depends on
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, "struct kvm_msr_list")
KVM_GET_IRQCHIP = _iowr(0x62, "struct kvm_irqchip")
KVM_SET_IRQCHIP = _ior(0x63, "struct kvm_irqchip")
KVM_SET_CLOCK = _iow(0x7B, "struct kvm_clock_data")
KVM_GET_CLOCK = _ior(0x7C, "struct kvm_clock_data")
KVM_GET_PIT2 = _ior(0x9F, "struct kvm_pit_state2")
KVM_SET_PIT2 = _iow(0xA0, "struct kvm_pit_state2")
KVM_GET_VCPU_EVENTS = _ior(0x9F, "struct kvm_vcpu_events")
KVM_SET_VCPU_EVENTS = _iow(0xA0, "struct kvm_vcpu_events")
KVM_GET_DEBUGREGS = _ior(0xA1, "struct kvm_debugregs")
KVM_SET_DEBUGREGS = _iow(0xA2, "struct kvm_debugregs")
KVM_SET_TSC_KHZ = _io(0xA2)
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_GET_XSAVE = _ior(0xA4, "struct kvm_xsave")
KVM_SET_XSAVE = _iow(0xA5, "struct kvm_xsave")
KVM_GET_XCRS = _ior(0xA6, "struct kvm_xcrs")
KVM_SET_XCRS = _iow(0xA7, "struct kvm_xcrs")
KVM_GET_XSAVE2 = _ior(0xCF, "struct kvm_xsave")
KVM_GET_CPUID2 = _iowr(0x91, "struct kvm_cpuid2")

IOCTL_NAMES: dict[int, str] = {
    v: k for k, v in dict(globals()).items() if k.startswith("KVM_") and isinstance(v, int)
}

# -- constants ------------------------------------------------------------------------------------

KVM_API_VERSION = 12

KVM_CAP_IRQCHIP = 0
KVM_CAP_COALESCED_MMIO = 15  # answers the ring's page offset in the vCPU mapping (0: none)
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_IOEVENTFD = 36
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_XSAVE2 = 208

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
#: kvm_clock_data.flags: KVM_GET_CLOCK says which fields it filled; KVM_SET_CLOCK takes REALTIME
KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 4
KVM_CLOCK_HOST_TSC = 8
#: KVM_GET_MSR_INDEX_LIST: room for the host's list (~100 on current kernels; E2BIG if short)
MAX_MSR_INDICES = 1024

KVM_PIT_SPEAKER_DUMMY = 1
KVM_IOEVENTFD_FLAG_DATAMATCH = 1
KVM_IOEVENTFD_FLAG_PIO = 2
KVM_IOEVENTFD_FLAG_DEASSIGN = 4
KVM_IRQFD_FLAG_DEASSIGN = 1
KVM_MEM_READONLY = 2

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1

# exit reasons
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

EXIT_NAMES: dict[int, str] = {
    v: k[len("KVM_EXIT_") :] for k, v in dict(globals()).items() if k.startswith("KVM_EXIT_")
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
#: room for KVM_GET_SUPPORTED_CPUID (the host returns ~56; E2BIG if too small)
MAX_CPUID_ENTRIES = 256

KVM_RUN_EXIT_OFFSET = 32


if __name__ == "__main__":
    import os

    write_ffi_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_kvm_ffi.py"))
