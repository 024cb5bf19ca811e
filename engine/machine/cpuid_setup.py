"""Per-vCPU CPUID tables: KVM's supported set, patched for topology (and PVM's limits).

The patching rules live in ``engine.machine.cpuid.patch_cpuid`` (pure); this module is the glue
that needs the host: it knows whether the host is PVM, whose emulator cannot run some features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from engine.machine.cpuid import CpuidEntry, patch_cpuid, vendor_of
from engine.plan import TopologyPlan, VcpuPlan

PVM_SYSFS = "/sys/module/kvm_pvm"


def is_pvm_host(sysfs: str = PVM_SYSFS) -> bool:
    return os.path.exists(sysfs)


def vcpu_cpuid(
    entries: Sequence[CpuidEntry], vcpu: VcpuPlan, topology: TopologyPlan, *, pvm: bool
) -> list[CpuidEntry]:
    """The CPUID table for one vCPU, from KVM_GET_SUPPORTED_CPUID's ``entries``."""
    return patch_cpuid(entries, vcpu, topology, vendor=vendor_of(entries), pvm=pvm)
