"""Manifest → the guest memory map and NUMA topology of the engine plan. Pure.

RAM zones (NUMA nodes' memdevs first, then node-less zones) are laid out back to back around the
32-bit MMIO hole; each piece keeps the host binding (mbind) of its zone. vCPUs no node names
join node 0 when it exists, as StratoVirt; missing distances default to 10 (local) and 20.
"""

from __future__ import annotations

from engine.machine import layout
from engine.plan import HostBinding, MemoryPlan, NumaNodePlan, NumaPlan, RamRange
from launcher.model import Manifest

DEFAULT_DISTANCE_LOCAL = 10
DEFAULT_DISTANCE_REMOTE = 20


def memory_plan(m: Manifest) -> tuple[MemoryPlan, NumaPlan | None, dict[int, int]]:
    """RAM ranges, NUMA node ranges and host bindings; and each vCPU's node (empty without NUMA)."""
    size = m.memory.size
    ranges: list[RamRange] = []
    bindings: list[HostBinding] = []
    nodes: list[NumaNodePlan] = []
    # Zones in declaration order: NUMA nodes first (their memdevs), then node-less zones.
    zones: list[tuple[int | None, int, tuple[int, ...], str]] = [
        (n.id, n.size, n.host_nodes, str(n.policy)) for n in m.numa.nodes
    ] + [(None, z.size, z.host_nodes, str(z.policy)) for z in m.memory.zones]
    offset = 0
    for node_id, zsize, host_nodes, policy in zones:
        pieces = layout.guest_ranges(offset, zsize)
        for addr, length in pieces:
            ranges.append(RamRange(addr, length, node_id))
            bindings.append(HostBinding(addr, length, host_nodes, policy))
        if node_id is not None:
            nodes.append(NumaNodePlan(node_id, (), zsize, tuple(pieces), host_nodes, policy))
        offset += zsize
    if offset < size:
        ranges.extend(RamRange(a, s) for a, s in layout.guest_ranges(offset, size - offset))
    memory = MemoryPlan(
        size=size,
        ranges=tuple(ranges),
        mmio_hole=(layout.MMIO32_START, layout.MMIO32_SIZE),
        mem_path=m.memory.path,
        prealloc=m.memory.prealloc,
        shared=m.machine.mem_share,
        dump_guest_core=m.machine.dump_guest_core,
        bindings=tuple(bindings),
    )
    if not m.numa.nodes:
        return memory, None, {}
    cpu_node: dict[int, int] = {}
    for n in m.numa.nodes:
        for c in n.cpus:
            cpu_node[c] = n.id
    for c in range(m.cpu.cpus):  # StratoVirt: uncovered vCPUs join node 0 when it exists
        if c not in cpu_node and any(n.id == 0 for n in m.numa.nodes):
            cpu_node[c] = 0
    nodes = [
        NumaNodePlan(
            n.id,
            tuple(sorted(c for c, nid in cpu_node.items() if nid == n.id)),
            n.size,
            n.ranges,
            n.host_nodes,
            n.policy,
        )
        for n in nodes
    ]
    ids = sorted(n.id for n in nodes)
    given = {(d.src, d.dst): d.val for d in m.numa.distances}
    matrix = tuple(
        tuple(
            given.get(
                (a, b),
                given.get((b, a), DEFAULT_DISTANCE_LOCAL if a == b else DEFAULT_DISTANCE_REMOTE),
            )
            for b in ids
        )
        for a in ids
    )
    return memory, NumaPlan(tuple(sorted(nodes, key=lambda n: n.id)), matrix), cpu_node
