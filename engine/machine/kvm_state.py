"""The KVM state a snapshot saves and a restore puts back, as raw ABI structs (``kvm_sys.CDEF``).

Mixed into ``VmFd`` (irqchip, PIT, kvmclock) and ``VcpuFd`` (XSAVE, XCRs, debug registers,
pending events, TSC frequency, CPUID, the MSR list). Every getter returns the struct's bytes
exactly as the kernel wrote them and every setter takes such bytes back: the snapshot stores
them as named, sized blobs (``engine/snapshot/format.py``), and nothing between the two
ioctls interprets a field it does not need. Each set checks the length first, so a blob of
the wrong size is refused before the kernel sees it.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from engine.machine import kvm_sys as k
from engine.machine.kvm_ioctl import KvmError, ioctl

if TYPE_CHECKING:
    from typing import Any

ffi = k.ffi
XSAVE_SIZE = 4096  # struct kvm_xsave; KVM_CAP_XSAVE2 reports more when the guest has AMX state


def _get(fd: int, ctype: str, req: int, size: int | None = None) -> bytes:
    """The bytes of a ``ctype`` the kernel fills (``size`` for variable-length structs)."""
    buf = ffi.new("uint8_t[]", size or ffi.sizeof(ctype))
    ioctl(fd, req, ffi.cast(f"{ctype} *", buf))
    return bytes(ffi.buffer(buf))


def _set(fd: int, ctype: str, req: int, data: bytes, size: int | None = None) -> None:
    want = size or ffi.sizeof(ctype)
    if len(data) != want:
        raise KvmError(
            k.IOCTL_NAMES.get(req, hex(req)),
            errno.EINVAL,
            f"{ctype} is {want} bytes, the saved state has {len(data)}",
        )
    buf = ffi.new("uint8_t[]", data)
    ioctl(fd, req, ffi.cast(f"{ctype} *", buf))


def msr_index_list(kvm_fd: int) -> list[int]:
    """The MSRs this host's KVM can save and restore (KVM_GET_MSR_INDEX_LIST on /dev/kvm)."""
    n = k.MAX_MSR_INDICES
    lst = ffi.new("struct kvm_msr_list *", {"nmsrs": n, "indices": n})
    ioctl(kvm_fd, k.KVM_GET_MSR_INDEX_LIST, lst)
    return [lst.indices[i] for i in range(lst.nmsrs)]


class VmStateIoctls:
    """VM-wide state: the PIC pair and IOAPIC, the PIT, kvmclock."""

    fd: int

    def get_irqchip(self, chip_id: int) -> bytes:
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        ioctl(self.fd, k.KVM_GET_IRQCHIP, chip)
        return bytes(ffi.buffer(chip))

    def set_irqchip(self, data: bytes) -> None:
        _set(self.fd, "struct kvm_irqchip", k.KVM_SET_IRQCHIP, data)

    def get_pit2(self) -> bytes:
        return _get(self.fd, "struct kvm_pit_state2", k.KVM_GET_PIT2)

    def set_pit2(self, data: bytes) -> None:
        _set(self.fd, "struct kvm_pit_state2", k.KVM_SET_PIT2, data)

    def get_clock(self) -> tuple[int, int]:
        """kvmclock now, in ns since the VM's epoch, and the flags KVM filled."""
        c = ffi.new("struct kvm_clock_data *")
        ioctl(self.fd, k.KVM_GET_CLOCK, c)
        return int(c.clock), int(c.flags)

    def set_clock(self, ns: int) -> None:
        """Make kvmclock read ``ns`` now: the guest's clock goes on from the saved instant."""
        c = ffi.new("struct kvm_clock_data *", {"clock": ns})
        ioctl(self.fd, k.KVM_SET_CLOCK, c)


class VcpuStateIoctls:
    """Per-vCPU state beyond regs/sregs/FPU/LAPIC/MSRs/MP state (those are in ``kvm.py``)."""

    fd: int

    def get_xsave(self, size: int = XSAVE_SIZE) -> bytes:
        """The XSAVE area; ``size`` > 4096 (KVM_CAP_XSAVE2) uses KVM_GET_XSAVE2."""
        req = k.KVM_GET_XSAVE2 if size > XSAVE_SIZE else k.KVM_GET_XSAVE
        return _get(self.fd, "struct kvm_xsave", req, size)

    def set_xsave(self, data: bytes) -> None:
        _set(self.fd, "struct kvm_xsave", k.KVM_SET_XSAVE, data, max(len(data), XSAVE_SIZE))

    def get_xcrs(self) -> bytes:
        return _get(self.fd, "struct kvm_xcrs", k.KVM_GET_XCRS)

    def set_xcrs(self, data: bytes) -> None:
        _set(self.fd, "struct kvm_xcrs", k.KVM_SET_XCRS, data)

    def get_debugregs(self) -> bytes:
        return _get(self.fd, "struct kvm_debugregs", k.KVM_GET_DEBUGREGS)

    def set_debugregs(self, data: bytes) -> None:
        _set(self.fd, "struct kvm_debugregs", k.KVM_SET_DEBUGREGS, data)

    def get_vcpu_events(self) -> bytes:
        return _get(self.fd, "struct kvm_vcpu_events", k.KVM_GET_VCPU_EVENTS)

    def set_vcpu_events(self, data: bytes) -> None:
        _set(self.fd, "struct kvm_vcpu_events", k.KVM_SET_VCPU_EVENTS, data)

    def get_tsc_khz(self) -> int:
        return ioctl(self.fd, k.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        ioctl(self.fd, k.KVM_SET_TSC_KHZ, khz, detail=f"{khz} kHz")

    def get_cpuid2(self) -> list[tuple[int, ...]]:
        """The CPUID table the vCPU has (KVM_GET_CPUID2), as (function, index, flags, eax, ebx,
        ecx, edx) rows."""
        n = k.MAX_CPUID_ENTRIES
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        ioctl(self.fd, k.KVM_GET_CPUID2, buf)
        return [
            (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (buf.entries[i] for i in range(buf.nent))
        ]

    def raw_regs(self) -> bytes:
        return bytes(ffi.buffer(self.get_regs()))  # type: ignore[attr-defined]

    def raw_sregs(self) -> bytes:
        return bytes(ffi.buffer(self.get_sregs()))  # type: ignore[attr-defined]

    def raw_fpu(self) -> bytes:
        return bytes(ffi.buffer(self.get_fpu()))  # type: ignore[attr-defined]

    def set_raw(self, ctype: str, data: bytes) -> None:
        """KVM_SET_REGS/SREGS/FPU from saved bytes (``ctype`` names which)."""
        req = {
            "struct kvm_regs": k.KVM_SET_REGS,
            "struct kvm_sregs": k.KVM_SET_SREGS,
            "struct kvm_fpu": k.KVM_SET_FPU,
        }[ctype]
        _set(self.fd, ctype, req, data)


def cdata_bytes(value: Any) -> bytes:
    """The bytes of a cffi struct (tests compare them)."""
    return bytes(ffi.buffer(value))
