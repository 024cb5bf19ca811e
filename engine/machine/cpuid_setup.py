"""Per-vCPU CPUID tables: KVM's supported set, patched for topology (and PVM's limits).

The patching rules live in ``engine.machine.cpuid.patch_cpuid`` (pure, owned by the ACPI/CPUID
module). This module is the glue: it reads KVM_GET_SUPPORTED_CPUID once, converts entries, and
falls back to a minimal patch (APIC id, hypervisor bit, x2APIC ids, PVM's CX16 mask) when that
module is not available, so a VM still boots with consistent APIC ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from engine.machine.kvm import KvmCpuidEntry
from launcher.compile.plan import TopologyPlan, VcpuPlan

log = logging.getLogger(__name__)

PVM_SYSFS = "/sys/module/kvm_pvm"

#: (leaf, register, bits) cleared on PVM: instructions KVM's emulator cannot run (engine-notes §3.3)
PVM_MASK: tuple[tuple[int, str, int], ...] = (
    (
        1,
        "ecx",
        (1 << 13)
        | (1 << 23)
        | (1 << 20)
        | (1 << 26)
        | (1 << 27)
        | (1 << 28)
        | (1 << 25)
        | (1 << 1)
        | (1 << 22),
    ),
    (7, "ebx", (1 << 9) | (1 << 5) | (1 << 16) | (1 << 17) | (1 << 21) | (0x3F << 26)),
    (7, "edx", 1 << 4),
    (7, "ecx", 1 << 22),
    (0x8000_0001, "edx", 1 << 27),
)


def is_pvm_host(sysfs: str = PVM_SYSFS) -> bool:
    return os.path.exists(sysfs)


def vendor_of(entries: Sequence[KvmCpuidEntry]) -> str:
    for e in entries:
        if e.function == 0:
            raw = b"".join(r.to_bytes(4, "little") for r in (e.ebx, e.edx, e.ecx))
            return raw.decode(errors="replace")
    return ""


def _minimal_patch(
    entries: Sequence[KvmCpuidEntry], vcpu: VcpuPlan, topology: TopologyPlan, *, pvm: bool
) -> list[KvmCpuidEntry]:
    per_pkg = topology.dies * topology.clusters * topology.cores * topology.threads
    out = []
    for e in entries:
        if e.function == 1:
            ebx = (e.ebx & 0x0000FFFF) | (vcpu.apic_id << 24) | (min(per_pkg, 255) << 16)
            ebx = (ebx & ~0xFF00) | (8 << 8)
            e = replace(e, ebx=ebx, ecx=e.ecx | (1 << 31))
        elif e.function in (0xB, 0x1F):
            e = replace(e, edx=vcpu.apic_id)
        elif pvm and e.function == 0xD:
            continue
        for leaf, reg, bits in PVM_MASK if pvm else ():
            if e.function == leaf:
                e = replace(e, **{reg: getattr(e, reg) & ~bits})
        out.append(e)
    return out


def vcpu_cpuid(
    entries: Sequence[KvmCpuidEntry], vcpu: VcpuPlan, topology: TopologyPlan, *, pvm: bool
) -> Sequence[Any]:
    """The CPUID table for one vCPU (objects with function/index/flags/eax..edx)."""
    try:
        from engine.machine import cpuid as cpuid_mod
    except ImportError:
        return _minimal_patch(entries, vcpu, topology, pvm=pvm)
    conv = [
        cpuid_mod.CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        for e in entries
    ]
    return cpuid_mod.patch_cpuid(conv, vcpu, topology, vendor=cpuid_mod.vendor_of(conv), pvm=pvm)
