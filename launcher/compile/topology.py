"""CPU topology: StratoVirt's ``-smp`` resolution and the x86 APIC-id layout.

``resolve_topology`` follows StratoVirt v2.2.0's ``adjust_topology``/``smp_read_and_check``
(docs/stratovirt.md, "SMP topology") step by step, so ``validate`` and ``cmdline`` agree with what
StratoVirt will do. ``apic_id`` packs (package, die, cluster, core, thread) into bit fields the way
QEMU's ``apicid_from_topo_ids`` does; CPUID leaves, the MADT and the SRAT all use the plan's ids.
"""

from __future__ import annotations

from engine.machine.apicid import (  # re-exported: the engine imports the leaf module
    ApicIdWidths,
    CpuPosition,
    _width,
    apic_id_widths,
    cpu_positions,
)
from launcher.model import Cpu, Topology

__all__ = [
    "MAX_CPUS",
    "ApicIdWidths",
    "CpuPosition",
    "Topology",
    "TopologyError",
    "_width",
    "apic_id_widths",
    "cpu_positions",
    "resolve_topology",
]

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
