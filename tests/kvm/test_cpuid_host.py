"""patch_cpuid against this host's real /dev/kvm: its supported list decodes, and KVM accepts the result.

A tiny cffi ioctl wrapper lives here on purpose, so the test depends on nothing but /dev/kvm.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from acpi_plans import TOPOLOGIES, topology_plan, vcpus_for
from cpuid_decode import check_topology

from engine.machine.cpuid import CpuidEntry, patch_cpuid, vendor_of

pytestmark = pytest.mark.kvm

KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_SET_CPUID2 = 0x4008AE90
KVM_GET_CPUID2 = 0xC008AE91
NENT = 256
PVM = os.path.exists("/sys/module/kvm_pvm")


@pytest.fixture(scope="module")
def kvm() -> Iterator[tuple[object, object, int]]:
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef(
        """
        struct kvm_cpuid_entry2 { uint32_t function, index, flags, eax, ebx, ecx, edx, pad[3]; };
        struct kvm_cpuid2 { uint32_t nent; uint32_t padding; struct kvm_cpuid_entry2 entries[]; };
        int ioctl(int, unsigned long, ...);
        """
    )
    libc = ffi.dlopen(None)
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        yield ffi, libc, fd
    finally:
        os.close(fd)


def _ioctl(kvm, fd: int, req: int, arg) -> int:
    ffi, libc, _ = kvm
    r = libc.ioctl(fd, req, arg)
    if r < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno), hex(req))
    return r


def _read(kvm, fd: int, req: int) -> list[CpuidEntry]:
    ffi = kvm[0]
    buf = ffi.new("struct kvm_cpuid2 *", {"nent": NENT, "entries": NENT})
    _ioctl(kvm, fd, req, buf)
    return [
        CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        for e in buf.entries[0 : buf.nent]
    ]


@pytest.fixture(scope="module")
def supported(kvm) -> list[CpuidEntry]:
    return _read(kvm, kvm[2], KVM_GET_SUPPORTED_CPUID)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_host_supported_cpuid_decodes_to_the_plan(supported, name: str) -> None:
    check_topology(tuple(supported), topology_plan(*TOPOLOGIES[name]))


@pytest.mark.parametrize("name", ["1cpu", "2s2c", "8cpu-dies-threads"])
def test_kvm_accepts_the_patched_table_for_each_vcpu(kvm, supported, name: str) -> None:
    """KVM_SET_CPUID2 on vCPUs created with their APIC ids; the topology reads back unchanged."""
    ffi = kvm[0]
    t = topology_plan(*TOPOLOGIES[name])
    vm = _ioctl(kvm, kvm[2], KVM_CREATE_VM, ffi.cast("unsigned long", 0))
    fds = []
    try:
        for v in vcpus_for(t):
            vcpu = _ioctl(kvm, vm, KVM_CREATE_VCPU, ffi.cast("unsigned long", v.apic_id))
            fds.append(vcpu)
            table = patch_cpuid(supported, v, t, vendor=vendor_of(supported), pvm=PVM)
            buf = ffi.new("struct kvm_cpuid2 *", {"nent": len(table), "entries": len(table)})
            buf.nent = len(table)
            for i, e in enumerate(table):
                d = buf.entries[i]
                d.function, d.index, d.flags = e.function, e.index, e.flags
                d.eax, d.ebx, d.ecx, d.edx = e.eax, e.ebx, e.ecx, e.edx
            _ioctl(kvm, vcpu, KVM_SET_CPUID2, buf)
            back = {(e.function, e.index): e for e in _read(kvm, vcpu, KVM_GET_CPUID2)}
            mine = {(e.function, e.index): e for e in table}
            assert back[(1, 0)].ebx == mine[(1, 0)].ebx
            for key, e in mine.items():
                if key[0] in (0xB, 0x1F, 0x8000001E):
                    assert back[key] == e, hex(key[0])
            if PVM:
                assert not back[(1, 0)].ecx & (1 << 13)  # CX16 hidden from the guest
    finally:
        for fd in fds:
            os.close(fd)
        os.close(vm)
