"""CPU topology: StratoVirt's ``-smp`` resolution and the x86 APIC-id layout.

``resolve_topology`` follows StratoVirt v2.2.0's ``adjust_topology``/``smp_read_and_check``
(stratovirt-spec §4.4) step by step, so ``validate`` and ``cmdline`` agree with what StratoVirt
will do. ``apic_id`` packs (package, die, cluster, core, thread) into bit fields the way QEMU's
``apicid_from_topo_ids`` does; CPUID leaves, the MADT and the SRAT all use the plan's ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.model import Cpu, Topology

MAX_CPUS = 254


class TopologyError(ValueError):
    """An ``-smp`` that StratoVirt rejects; ``field`` names the offending key."""

    def __init__(self, message: str, field: str = "cpus", hint: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.hint = hint


def resolve_topology(cpu: Cpu) -> Topology:
    """Fill unknown factors and check them exactly as StratoVirt v2.2.0 does."""
    cpus = cpu.cpus
    for key in ("cpus", "sockets", "cores", "threads", "dies", "clusters"):
        value = getattr(cpu, key)
        if value is not None and value < 1:
            raise TopologyError(f"'{key}' must be at least 1, got {value}", key)
    dies = cpu.dies or 1
    clusters = cpu.clusters or 1
    sockets, cores, threads = cpu.sockets, cpu.cores, cpu.threads
    maxcpus = cpu.maxcpus or None  # 0 means unset
    if maxcpus is None:
        if sockets and cores and threads:
            maxcpus = sockets * dies * clusters * cores * threads
        else:
            maxcpus = cpus
    if cores is None:
        sockets = sockets or 1
        threads = threads or 1
        cores = maxcpus // (sockets * dies * clusters * threads)
    elif sockets is None:
        threads = threads or 1
        sockets = maxcpus // (dies * clusters * cores * threads)
    if threads is None:
        threads = maxcpus // (sockets * dies * clusters * cores)
    if not 1 <= cpus <= MAX_CPUS:
        raise TopologyError(f"cpus must be between 1 and {MAX_CPUS}, got {cpus}", "cpus")
    if not 1 <= maxcpus <= MAX_CPUS:
        raise TopologyError(f"maxcpus must be between 1 and {MAX_CPUS}, got {maxcpus}", "maxcpus")
    if maxcpus < cpus:
        raise TopologyError(
            f"maxcpus ({maxcpus}) must not be smaller than cpus ({cpus})",
            "maxcpus",
            hint="raise maxcpus or lower cpus",
        )
    product = sockets * dies * clusters * cores * threads
    if product != maxcpus:
        raise TopologyError(
            f"sockets * dies * clusters * cores * threads must be equal to max_cpus: "
            f"{sockets}*{dies}*{clusters}*{cores}*{threads} = {product}, max_cpus = {maxcpus}",
            "sockets" if cpu.sockets is not None else "cpus",
            hint="make the product of the topology factors equal maxcpus (or cpus when maxcpus is unset)",
        )
    return Topology(cpus, maxcpus, sockets, dies, clusters, cores, threads)


def _width(count: int) -> int:
    """Bits needed to number ``count`` items (0 for a single item)."""
    return (count - 1).bit_length()


@dataclass(frozen=True)
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


def apic_id_widths(topology: Topology) -> ApicIdWidths:
    return ApicIdWidths(
        thread=_width(topology.threads),
        core=_width(topology.cores),
        cluster=_width(topology.clusters),
        die=_width(topology.dies),
    )


@dataclass(frozen=True)
class CpuPosition:
    index: int
    package: int
    die: int
    cluster: int
    core: int
    thread: int
    apic_id: int


def cpu_positions(topology: Topology) -> list[CpuPosition]:
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
