"""The KVM layer: ioctl numbers, struct layouts, and errors that name the ioctl and its meaning."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

from engine.machine import kvm_sys as k
from engine.machine.kvm import Kvm, KvmError
from launcher.errors import HostError

# The numbers this host's kernel answers to (docs/engine.md, "KVM from Python").
PINNED = {
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_IRQFD": 0x4020AE76,
    "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_IOEVENTFD": 0x4040AE79,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_GET_FPU": 0x81A0AE8C,
    "KVM_SET_FPU": 0x41A0AE8D,
    "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_SET_MP_STATE": 0x4004AE99,
    # snapshot/restore (linux/kvm.h, x86_64)
    "KVM_GET_MSR_INDEX_LIST": 0xC004AE02,
    "KVM_GET_IRQCHIP": 0xC208AE62,
    "KVM_SET_IRQCHIP": 0x8208AE63,
    "KVM_SET_CLOCK": 0x4030AE7B,
    "KVM_GET_CLOCK": 0x8030AE7C,
    "KVM_GET_PIT2": 0x8070AE9F,
    "KVM_SET_PIT2": 0x4070AEA0,
    "KVM_GET_VCPU_EVENTS": 0x8040AE9F,
    "KVM_SET_VCPU_EVENTS": 0x4040AEA0,
    "KVM_GET_DEBUGREGS": 0x8080AEA1,
    "KVM_SET_DEBUGREGS": 0x4080AEA2,
    "KVM_SET_TSC_KHZ": 0xAEA2,
    "KVM_GET_TSC_KHZ": 0xAEA3,
    "KVM_GET_XSAVE": 0x9000AEA4,
    "KVM_SET_XSAVE": 0x5000AEA5,
    "KVM_GET_XCRS": 0x8188AEA6,
    "KVM_SET_XCRS": 0x4188AEA7,
    "KVM_GET_XSAVE2": 0x9000AECF,
    "KVM_GET_CPUID2": 0xC008AE91,
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_ioctl_numbers_match_the_kernel_abi(name: str) -> None:
    assert getattr(k, name) == PINNED[name]


def test_struct_layouts() -> None:
    assert k.ffi.sizeof("struct kvm_segment") == 24
    assert k.ffi.sizeof("struct kvm_lapic_state") == 1024
    assert k.ffi.sizeof("struct kvm_cpuid_entry2") == 40
    assert k.ffi.offsetof("struct kvm_run", "io") == k.KVM_RUN_EXIT_OFFSET
    assert k.ffi.offsetof("struct kvm_exit_emulation_failure", "insn_bytes") == 17


def test_error_names_ioctl_errno_and_meaning() -> None:
    e = KvmError("KVM_CREATE_VCPU", errno.EEXIST, "id 0")
    assert str(e) == "KVM_CREATE_VCPU failed (id 0): EEXIST: a vCPU with this id already exists"
    generic = KvmError("KVM_SET_REGS", errno.EBADF)
    assert "EBADF" in str(generic) and "closed" in str(generic)


def test_missing_dev_kvm_is_a_host_error(tmp_path) -> None:
    with pytest.raises(HostError) as info:
        Kvm(str(tmp_path / "kvm"))
    assert "/dev/kvm does not exist" in str(info.value)
    assert "modprobe" in info.value.hint


@pytest.mark.kvm
class TestRealKvm:
    def test_caps_and_supported_cpuid(self) -> None:
        kvm = Kvm()
        assert kvm.max_vcpus >= 1 and kvm.max_vcpu_id >= kvm.max_vcpus
        leaves = {e.function for e in kvm.supported_cpuid()}
        assert {0, 1, 0x80000000} <= leaves
        kvm.close()

    def test_vcpu_errors_name_the_limit(self) -> None:
        kvm = Kvm()
        vm = kvm.create_vm()
        vm.create_vcpu(0)
        with pytest.raises(KvmError, match="EEXIST: a vCPU with this id already exists"):
            vm.create_vcpu(0)
        with pytest.raises(KvmError) as info:
            vm.create_vcpu(kvm.max_vcpu_id + 10)
        assert f"max vcpu id {kvm.max_vcpu_id}" in str(info.value)
        assert info.value.hint
        vm.close()
        kvm.close()

    def test_overlapping_memory_slot(self) -> None:
        kvm = Kvm()
        vm = kvm.create_vm()
        m = mmap.mmap(-1, 2 << 20)
        import ctypes

        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        vm.set_user_memory_region(0, 0, 2 << 20, addr)
        with pytest.raises(KvmError, match="overlaps another memory slot"):
            vm.set_user_memory_region(1, 1 << 20, 1 << 20, addr)
        vm.close()
        kvm.close()

    def test_irqchip_pit_eventfds(self) -> None:
        kvm = Kvm()
        vm = kvm.create_vm()
        vm.set_tss_address(0xFFFBD000)  # above INT_MAX: fcntl.ioctl could not pass it
        vm.create_irqchip()
        vm.create_pit2()
        with pytest.raises(KvmError, match="KVM_CREATE_IRQCHIP"):
            vm.create_irqchip()
        efd = os.eventfd(0)
        vm.register_irqfd(efd, 5)
        kfd = os.eventfd(0)
        vm.register_ioeventfd(kfd, 0xD0000050, 4, datamatch=0)
        with pytest.raises(KvmError, match="KVM_IOEVENTFD"):
            vm.register_ioeventfd(kfd, 0xD0000050, 4, datamatch=0)
        vm.register_ioeventfd(kfd, 0xD0000050, 4, datamatch=0, deassign=True)
        vm.close()
        kvm.close()
        os.close(efd)
        os.close(kfd)


def test_generated_ffi_module_matches_cdef(tmp_path) -> None:
    """``_kvm_ffi.py`` (pre-built, so start-up parses no C) must be regenerated after CDEF edits."""
    out = tmp_path / "ffi.py"
    k.write_ffi_module(str(out))
    committed = (Path(k.__file__).parent / "_kvm_ffi.py").read_text()
    assert committed == out.read_text(), "run: python -m engine.machine.kvm_sys"


def test_engine_ffi_is_prebuilt_and_matches_parsed_layouts() -> None:
    """The imported FFI is the generated one, and it agrees with a freshly parsed CDEF."""
    from engine.machine import _kvm_ffi

    assert k.ffi is _kvm_ffi.ffi
    parsed = k.build_ffi()
    for name in ("struct kvm_run", "struct kvm_sregs", "struct kvm_ioeventfd", "struct kvm_fpu"):
        assert k.ffi.sizeof(name) == parsed.sizeof(name)
    assert k.ffi.offsetof("struct kvm_run", "exit_reason") == parsed.offsetof(
        "struct kvm_run", "exit_reason"
    )
