"""Thin, checked wrappers over the KVM ioctls: ``Kvm`` → ``VmFd`` → ``VcpuFd`` (kvm-ioctls style).

Each type holds one fd and only the ioctls that apply to it (the state a snapshot saves and
restores is in ``kvm_state.py``, mixed into ``VmFd`` and ``VcpuFd``). Every failure raises ``KvmError``
naming the ioctl, the errno and what it usually means on this kind of call, so "KVM_CREATE_VCPU
failed: EINVAL" arrives with "the vCPU id is above the host's limit" attached. This is the only
module that issues KVM ioctls; callers pass and receive plain Python values or cffi structs.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from engine.errors import HostError
from engine.machine import kvm_sys as k
from engine.machine.cpuid import CpuidEntry, CpuidLike
from engine.machine.kvm_ioctl import KvmError
from engine.machine.kvm_ioctl import ioctl as _ioctl
from engine.machine.kvm_state import VcpuStateIoctls, VmStateIoctls

if TYPE_CHECKING:
    from typing import Any

ffi, libc = k.ffi, k.libc
#: KVM_RUN's argument and the exit-reason field, made once: the vCPU loop's hot path
_ARG_ZERO = ffi.cast("unsigned long", 0)
_EXIT_REASON = struct.Struct("<I")


class Kvm:
    """``/dev/kvm``: capabilities and VM creation."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            err = KvmError("open /dev/kvm", e.errno or errno.EIO, path)
            raise HostError(
                err.message,
                hint="load kvm (modprobe kvm_intel/kvm_amd/kvm_pvm) and run as a user with "
                "read-write access to /dev/kvm",
            ) from None
        version = _ioctl(self.fd, k.KVM_GET_API_VERSION)
        if version != k.KVM_API_VERSION:
            raise HostError(f"/dev/kvm reports API version {version}, expected 12")
        self.vcpu_mmap_size = _ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap)

    @property
    def max_vcpus(self) -> int:
        return self.check_extension(k.KVM_CAP_MAX_VCPUS) or self.check_extension(k.KVM_CAP_NR_VCPUS)

    @property
    def max_vcpu_id(self) -> int:
        return self.check_extension(k.KVM_CAP_MAX_VCPU_ID) or self.max_vcpus

    def supported_cpuid(self) -> list[CpuidEntry]:
        n = k.MAX_CPUID_ENTRIES
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        _ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, buf)
        return [
            CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (buf.entries[i] for i in range(buf.nent))
        ]

    def create_vm(self) -> VmFd:
        fd = _ioctl(self.fd, k.KVM_CREATE_VM, 0)
        os.set_inheritable(fd, False)
        return VmFd(fd, self)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VmFd(VmStateIoctls):
    """One VM: memory slots, irqchip, PIT, eventfds, vCPU creation."""

    def __init__(self, fd: int, kvm: Kvm) -> None:
        self.fd = fd
        self.kvm = kvm

    def set_user_memory_region(
        self, slot: int, guest_addr: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        """Map ``size`` bytes at host ``host_addr`` as guest ``guest_addr``.

        Precondition (unchecked by KVM): the host range stays mapped for the VM's lifetime; the
        caller keeps the ``GuestRegion`` alive until the VM fd is closed.
        """
        r = ffi.new(
            "struct kvm_userspace_memory_region *",
            {
                "slot": slot,
                "flags": flags,
                "guest_phys_addr": guest_addr,
                "memory_size": size,
                "userspace_addr": host_addr,
            },
        )
        _ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, r, detail=f"slot {slot} at {guest_addr:#x}")

    def set_tss_address(self, addr: int) -> None:
        _ioctl(self.fd, k.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_address(self, addr: int) -> None:
        v = ffi.new("uint64_t *", addr)
        _ioctl(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, v)

    def create_irqchip(self) -> None:
        _ioctl(self.fd, k.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = k.KVM_PIT_SPEAKER_DUMMY) -> None:
        cfg = ffi.new("struct kvm_pit_config *", {"flags": flags})
        _ioctl(self.fd, k.KVM_CREATE_PIT2, cfg)

    def set_irq_line(self, irq: int, level: int) -> None:
        lv = ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        _ioctl(self.fd, k.KVM_IRQ_LINE, lv)

    def register_irqfd(self, efd: int, gsi: int, *, deassign: bool = False) -> None:
        flags = k.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        s = ffi.new("struct kvm_irqfd *", {"fd": efd, "gsi": gsi, "flags": flags})
        _ioctl(self.fd, k.KVM_IRQFD, s, detail=f"gsi {gsi}")

    def register_ioeventfd(
        self,
        efd: int,
        addr: int,
        length: int,
        datamatch: int | None = None,
        *,
        pio: bool = False,
        deassign: bool = False,
    ) -> None:
        flags = 0
        if datamatch is not None:
            flags |= k.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= k.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= k.KVM_IOEVENTFD_FLAG_DEASSIGN
        s = ffi.new(
            "struct kvm_ioeventfd *",
            {"datamatch": datamatch or 0, "addr": addr, "len": length, "fd": efd, "flags": flags},
        )
        _ioctl(self.fd, k.KVM_IOEVENTFD, s, detail=f"addr {addr:#x} len {length}")

    def coalesce_pio(self, port: int, size: int, *, on: bool) -> None:
        """Let KVM queue guest writes to ``[port, port+size)`` in the coalesced ring instead of
        exiting (``on``), or exit again (docs/console.md)."""
        zone = ffi.from_buffer(bytearray(struct.pack("<QII", port, size, 1)))
        req = k.KVM_REGISTER_COALESCED_MMIO if on else k.KVM_UNREGISTER_COALESCED_MMIO
        _ioctl(self.fd, req, zone, detail=f"port {port:#x} size {size}")

    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        try:
            fd = _ioctl(self.fd, k.KVM_CREATE_VCPU, vcpu_id, detail=f"id {vcpu_id}")
        except KvmError as e:
            if e.errno == errno.EINVAL:
                raise KvmError(
                    "KVM_CREATE_VCPU",
                    e.errno,
                    f"id {vcpu_id}; host max vcpus {self.kvm.max_vcpus}, "
                    f"max vcpu id {self.kvm.max_vcpu_id}",
                    hint="use fewer vCPUs or a smaller topology",
                ) from None
            raise
        os.set_inheritable(fd, False)
        return VcpuFd(fd, vcpu_id, self.kvm.vcpu_mmap_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VcpuFd(VcpuStateIoctls):
    """One vCPU: register state, CPUID, LAPIC, and ``run()`` over its shared ``kvm_run`` page."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_buf = ffi.from_buffer(self._map)
        #: the shared kvm_run struct; ``run.io``, ``run.mmio`` ... are valid until the next run()
        self.run_struct: Any = ffi.cast("struct kvm_run *", self._run_buf)

    @property
    def run_map(self) -> mmap.mmap:
        """The raw kvm_run page (PIO data lives at ``io.data_offset`` inside it)."""
        return self._map

    def page(self, index: int) -> memoryview | None:
        """Page ``index`` of this vCPU's mapping (the coalesced ring's), None past its end."""
        start = index * mmap.PAGESIZE
        if index <= 0 or start + mmap.PAGESIZE > len(self._map):
            return None
        return memoryview(self._map)[start : start + mmap.PAGESIZE]

    def run(self) -> int:
        """Enter the guest; returns the exit reason, or ``KVM_EXIT_INTR`` when kicked (EINTR)."""
        if libc.ioctl(self.fd, k.KVM_RUN, _ARG_ZERO) < 0:
            return self.run_failed()
        return _EXIT_REASON.unpack_from(self._map, 8)[0]  # kvm_run.exit_reason, no cdata

    def entry(self) -> tuple[Callable[[], int], Callable[[Any, int], tuple[int]]]:
        """``run()`` in two parts for the vCPU loop: ``enter()`` (KVM_RUN's return value) and
        the exit reason's unpacker (``(run_map, 8)``); ``run_failed()`` when ``enter() < 0``."""
        return functools.partial(
            libc.ioctl, self.fd, k.KVM_RUN, _ARG_ZERO
        ), _EXIT_REASON.unpack_from

    def run_failed(self) -> int:
        """KVM_RUN returned < 0: ``KVM_EXIT_INTR`` when kicked (EINTR, EAGAIN), else raise."""
        err = ffi.errno
        if err in (errno.EINTR, errno.EAGAIN):
            return k.KVM_EXIT_INTR
        raise KvmError("KVM_RUN", err, f"vcpu {self.id}")

    def set_immediate_exit(self, value: bool) -> None:
        self.run_struct.immediate_exit = 1 if value else 0

    # -- state ------------------------------------------------------------------------------------

    def _get(self, ctype: str, req: int) -> Any:
        """A new ``ctype`` the kernel fills with this vCPU's state (the KVM_GET_* pattern)."""
        out = ffi.new(ctype)
        _ioctl(self.fd, req, out)
        return out

    def get_regs(self) -> Any:
        return self._get("struct kvm_regs *", k.KVM_GET_REGS)

    def set_regs(self, regs: Any) -> None:
        _ioctl(self.fd, k.KVM_SET_REGS, regs)

    def get_sregs(self) -> Any:
        return self._get("struct kvm_sregs *", k.KVM_GET_SREGS)

    def set_sregs(self, sregs: Any) -> None:
        _ioctl(self.fd, k.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> Any:
        return self._get("struct kvm_fpu *", k.KVM_GET_FPU)

    def set_fpu(self, fpu: Any) -> None:
        _ioctl(self.fd, k.KVM_SET_FPU, fpu)

    def set_msrs(self, entries: Sequence[tuple[int, int]]) -> None:
        n = len(entries)
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        for i, (index, data) in enumerate(entries):
            msrs.entries[i].index = index
            msrs.entries[i].data = data
        done = _ioctl(self.fd, k.KVM_SET_MSRS, msrs)
        if done != n:
            bad = entries[done][0]
            raise KvmError("KVM_SET_MSRS", errno.EINVAL, f"MSR {bad:#x} refused ({done}/{n} set)")

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        idx = list(indices)
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(idx), "entries": len(idx)})
        for i, index in enumerate(idx):
            msrs.entries[i].index = index
        done = _ioctl(self.fd, k.KVM_GET_MSRS, msrs)
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(done)}

    def get_lapic(self) -> bytearray:
        return bytearray(ffi.buffer(self._get("struct kvm_lapic_state *", k.KVM_GET_LAPIC)))

    def set_lapic(self, regs: bytes | bytearray) -> None:
        st = ffi.new("struct kvm_lapic_state *")
        ffi.buffer(st)[:] = bytes(regs)
        _ioctl(self.fd, k.KVM_SET_LAPIC, st)

    def set_cpuid2(self, entries: Sequence[CpuidLike]) -> None:
        n = len(entries)
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        for i, e in enumerate(entries):
            d = buf.entries[i]
            d.function, d.index, d.flags = e.function, e.index, e.flags
            d.eax, d.ebx, d.ecx, d.edx = e.eax, e.ebx, e.ecx, e.edx
        _ioctl(self.fd, k.KVM_SET_CPUID2, buf, detail=f"vcpu {self.id}, {n} entries")

    def get_mp_state(self) -> int:
        return self._get("struct kvm_mp_state *", k.KVM_GET_MP_STATE).mp_state

    def set_mp_state(self, state: int) -> None:
        st = ffi.new("struct kvm_mp_state *", {"mp_state": state})
        _ioctl(self.fd, k.KVM_SET_MP_STATE, st)

    def close(self) -> None:
        if self.fd >= 0:
            self.run_struct = None
            self._run_buf = None
            try:
                self._map.close()
            except BufferError:
                pass
            os.close(self.fd)
            self.fd = -1
