"""Memory size and NUMA rules (docs/stratovirt.md, "Memory" and "NUMA").

The guidebook says memory must be 256M-512G; v2.2.0's source accepts 128 MiB-512 GiB inclusive,
and the source wins. Sizes reach StratoVirt as ``<n>M``/``<n>G``, so they must be whole MiB.
"""

from __future__ import annotations

from launcher.manifest.sourcemap import Path
from launcher.manifest.values import GIB, MIB, format_size
from launcher.validate.base import Context
from launcher.validate.cpu import topology

MIN_MEM, MAX_MEM = 128 * MIB, 512 * GIB
MAX_NODES = 8
MAX_NODE_ID = 127
MAX_HOST_NODE = 127


def _fmt(size: int) -> str:
    f = format_size(size)
    return f"{f} ({size} bytes)" if isinstance(f, str) else f"{size} bytes"


def _whole_mib(ctx: Context, path: Path, size: int) -> None:
    if size % MIB:
        ctx.add(
            "memory-size-unit",
            path,
            f"size {size} bytes is not a whole number of MiB; StratoVirt takes sizes in M or G",
            f'use "{size // MIB}M" or "{size // MIB + 1}M"',
        )


def check(ctx: Context) -> None:
    man = ctx.manifest
    size = man.memory.size
    if not MIN_MEM <= size <= MAX_MEM:
        ctx.add(
            "memory-size-range",
            ("memory", "size"),
            f"memory size {_fmt(size)} is outside 128M-512G",
            'use a size between "128M" and "512G"',
        )
    _whole_mib(ctx, ("memory", "size"), size)
    seen: dict[str, Path] = {}
    for i, z in enumerate(man.memory.zones):
        _whole_mib(ctx, ("memory", "zones", i, "size"), z.size)
        _host_nodes(ctx, ("memory", "zones", i, "host-nodes"), z.host_nodes)
        _memdev(ctx, seen, z.id, ("memory", "zones", i, "id"))
    _numa(ctx, seen)


def _memdev(ctx: Context, seen: dict[str, Path], ident: str, path: Path) -> None:
    if ident in seen:
        ctx.add(
            "memory-zone-duplicate",
            path,
            f"memory object id {ident!r} is already used",
            "give each zone and NUMA node its own memdev id",
        )
    seen[ident] = path


def _host_nodes(ctx: Context, path: Path, nodes: tuple[int, ...]) -> None:
    for n in nodes:
        if n > MAX_HOST_NODE:
            ctx.add(
                "host-node-range",
                path,
                f"host node {n} is out of range 0-{MAX_HOST_NODE}",
                "list host NUMA nodes as shown by `numactl -H`",
            )


def _numa(ctx: Context, memdevs: dict[str, Path]) -> None:
    man = ctx.manifest
    nodes = man.numa.nodes
    if not nodes and not man.numa.distances:
        return
    if ctx.microvm:
        ctx.warn(
            "numa-microvm",
            ("numa",),
            "StratoVirt v2.2 ignores -numa on microvm (the"
            " svlaunch engine does build the NUMA topology)",
            "use q35/virt for the same result under StratoVirt",
        )
    if len(nodes) > MAX_NODES:
        ctx.add(
            "numa-node-limit",
            ("numa", "nodes", MAX_NODES),
            f"{len(nodes)} NUMA nodes; StratoVirt allows at most {MAX_NODES}",
            "merge nodes",
        )
    topo = topology(man)
    cpus = topo.cpus if topo else man.cpu.cpus
    ids: set[int] = set()
    owner: dict[int, int] = {}
    for i, n in enumerate(nodes):
        p: Path = ("numa", "nodes", i)
        if n.id > MAX_NODE_ID:
            ctx.add(
                "numa-node-id",
                (*p, "id"),
                f"node id {n.id} is out of range 0-{MAX_NODE_ID}",
                "number nodes from 0",
            )
        elif n.id in ids:
            ctx.add(
                "numa-node-id",
                (*p, "id"),
                f"node id {n.id} is used twice",
                "give each node its own id",
            )
        ids.add(n.id)
        _whole_mib(ctx, (*p, "size"), n.size)
        _host_nodes(ctx, (*p, "host-nodes"), n.host_nodes)
        _memdev(ctx, memdevs, n.memdev_id, (*p, "memdev") if n.memdev else (*p, "id"))
        for c in n.cpus:
            if c >= cpus:
                ctx.add(
                    "numa-cpu-range",
                    (*p, "cpus"),
                    f"vCPU {c} does not exist: cpu.cpus is {cpus} (vCPUs 0-{cpus - 1})",
                    "remove it or raise cpu.cpus",
                )
            elif c in owner:
                where = "this node" if owner[c] == n.id else f"node {owner[c]}"
                ctx.add(
                    "numa-cpu-duplicate",
                    (*p, "cpus"),
                    f"vCPU {c} is already in {where}",
                    "list each vCPU in exactly one node",
                )
            else:
                owner[c] = n.id
    missing = [c for c in range(cpus) if c not in owner]
    if nodes and missing:
        dest = "node 0" if 0 in ids else "no node (there is no node 0)"
        ctx.warn(
            "numa-cpus-uncovered",
            ("numa", "nodes"),
            f"vCPUs {missing} are in no node; StratoVirt puts them in {dest}",
            "list every vCPU in a node's cpus",
        )
    total = sum(n.size for n in nodes)
    if nodes and total != man.memory.size:
        ctx.add(
            "numa-memory-sum",
            ("numa", "nodes"),
            f"NUMA node sizes add up to {_fmt(total)} but memory.size is {_fmt(man.memory.size)}",
            "make the node sizes sum to memory.size exactly",
        )
    pairs: set[tuple[int, int]] = set()
    for i, d in enumerate(man.numa.distances):
        p = ("numa", "distances", i)
        for key, node in (("src", d.src), ("dst", d.dst)):
            if node not in ids:
                ctx.add(
                    "numa-distance",
                    (*p, key),
                    f"{key} {node} is not a declared node",
                    f"declared nodes: {sorted(ids)}",
                )
        if d.src == d.dst and d.val != 10:
            ctx.add(
                "numa-distance",
                (*p, "val"),
                f"distance from node {d.src} to itself must be 10, got {d.val}",
                "set val = 10 or drop the entry (10 is the default)",
            )
        elif d.src != d.dst and not 10 < d.val <= 255:
            ctx.add(
                "numa-distance",
                (*p, "val"),
                f"distance {d.src}->{d.dst} must be 11-255, got {d.val}",
                "20 is the usual remote distance",
            )
        if (d.src, d.dst) in pairs:
            ctx.add(
                "numa-distance", p, f"distance {d.src}->{d.dst} is given twice", "remove one entry"
            )
        pairs.add((d.src, d.dst))
