"""x86 APIC-id layout: bit widths per topology level and where each vCPU sits. A leaf module.

``apic_id`` packs (package, die, cluster, core, thread) into bit fields the way QEMU's
``apicid_from_topo_ids`` does; CPUID leaves, the MADT and the SRAT all use these ids, and the
compiler writes them into the plan. Part of the engine's contract: it imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class TopologyShape(Protocol):
    """Anything with the topology counts (the plan's ``TopologyPlan``, the manifest's resolved topology)."""

    @property
    def cpus(self) -> int: ...
    @property
    def dies(self) -> int: ...
    @property
    def clusters(self) -> int: ...
    @property
    def cores(self) -> int: ...
    @property
    def threads(self) -> int: ...


def _width(count: int) -> int:
    """Bits needed to number ``count`` items (0 for a single item)."""
    return (count - 1).bit_length()


@dataclass(frozen=True, slots=True)
class ApicIdWidths:
    """Bit widths and shifts of each level in an x86 APIC id."""

    thread: int
    core: int
    cluster: int
    die: int

    @property
    def core_shift(self) -> int:
        return self.thread

    @property
    def cluster_shift(self) -> int:
        return self.thread + self.core

    @property
    def die_shift(self) -> int:
        return self.thread + self.core + self.cluster

    @property
    def package_shift(self) -> int:
        return self.thread + self.core + self.cluster + self.die


def apic_id_widths(topology: TopologyShape) -> ApicIdWidths:
    return ApicIdWidths(
        thread=_width(topology.threads),
        core=_width(topology.cores),
        cluster=_width(topology.clusters),
        die=_width(topology.dies),
    )


@dataclass(frozen=True, slots=True)
class CpuPosition:
    index: int
    package: int
    die: int
    cluster: int
    core: int
    thread: int
    apic_id: int


def cpu_positions(topology: TopologyShape) -> list[CpuPosition]:
    """Where each of the ``cpus`` online vCPUs sits; vCPU i is the i-th in package-major order."""
    w = apic_id_widths(topology)
    out = []
    for i in range(topology.cpus):
        thread = i % topology.threads
        core = (i // topology.threads) % topology.cores
        cluster = (i // (topology.threads * topology.cores)) % topology.clusters
        die = (i // (topology.threads * topology.cores * topology.clusters)) % topology.dies
        package = i // (topology.threads * topology.cores * topology.clusters * topology.dies)
        apic = (
            (package << w.package_shift)
            | (die << w.die_shift)
            | (cluster << w.cluster_shift)
            | (core << w.core_shift)
            | thread
        )
        out.append(CpuPosition(i, package, die, cluster, core, thread, apic))
    return out
