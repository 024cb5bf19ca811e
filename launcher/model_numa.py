"""Guest NUMA and memory zones: ``-object memory-backend-ram`` and ``-numa node``/``dist``.

Part of ``launcher.model`` (which re-exports every name and loads this module on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.keys import INTLIST, REQUIRED, SIZE, key
from launcher.model_enums import NumaPolicy

BACKEND = "memory-backend-ram"


def host_nodes() -> Any:
    return key(
        (0,),
        "Host NUMA nodes the memory is bound to (v2.2.0 requires it; svlaunch defaults to 0,"
        " harmless with policy default).",
        kind=INTLIST,
        what="host node list",
        sv=(BACKEND, "host-nodes"),
        plan="HostBinding.host_nodes",
    )


def policy() -> Any:
    return key(
        NumaPolicy.DEFAULT,
        "Host memory policy (mbind).",
        sv=(BACKEND, "policy"),
        plan="HostBinding.policy",
    )


@dataclass(frozen=True, slots=True)
class MemoryZone:
    """``-object memory-backend-ram`` not tied to a NUMA node (laid out and bound all the same)."""

    id: str = key(REQUIRED, "Object id.", nonempty=True, sv=(BACKEND, "id"))
    size: int = key(REQUIRED, "Zone size.", kind=SIZE, sv=(BACKEND, "size"), plan="RamRange.size")
    host_nodes: tuple[int, ...] = host_nodes()
    policy: NumaPolicy = policy()


@dataclass(frozen=True, slots=True)
class NumaNode:
    """``-numa node`` plus the ``memory-backend-ram`` object it uses (declared once, here)."""

    id: int = key(REQUIRED, "Node id (0-127).", sv=("-numa node", "nodeid"), plan="NumaNodePlan.id")
    cpus: tuple[int, ...] = key(
        REQUIRED,
        "vCPUs of this node.",
        kind=INTLIST,
        what="cpu list",
        sv=("-numa node", "cpus"),
        plan="NumaNodePlan.cpus",
    )
    size: int = key(
        REQUIRED,
        "Memory of this node.",
        kind=SIZE,
        sv="-object memory-backend-ram,size=",
        plan="NumaNodePlan.size",
    )
    host_nodes: tuple[int, ...] = host_nodes()
    policy: NumaPolicy = policy()
    memdev: str | None = key(
        None, 'Memory object id; default "mem<id>".', nonempty=True, sv=("-numa node", "memdev")
    )

    @property
    def memdev_id(self) -> str:
        return self.memdev or f"mem{self.id}"


@dataclass(frozen=True, slots=True)
class NumaDistance:
    """``-numa dist``: how far node ``src`` is from node ``dst``."""

    src: int = key(REQUIRED, "Source node id.", sv=("-numa dist", "src"))
    dst: int = key(REQUIRED, "Destination node id.", sv=("-numa dist", "dst"))
    val: int = key(
        REQUIRED,
        "Distance: 10 for a node to itself, above 10 otherwise, at most 255.",
        sv=("-numa dist", "val"),
        plan="NumaPlan.distances",
    )
