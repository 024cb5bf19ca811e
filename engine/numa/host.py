"""Host NUMA: which nodes exist, and binding guest RAM to them with ``mbind``.

``check_host_nodes`` runs before anything is mapped, so a plan naming a node this host lacks
fails with one clear error instead of a half-built VM. ``bind_memory`` applies each
``HostBinding`` (policy + node mask) to the host pages behind a guest range, before the memory is
preallocated or touched, so first-touch places pages where the policy says. ``query_policy`` reads
the policy back with ``get_mempolicy(MPOL_F_ADDR)``; the tests use it to check a binding.
The sysfs root is a parameter so tests can fake a multi-node host in a temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.errors import EngineError, HostError
from engine.machine.kvm_sys import ffi, libc
from engine.machine.memory import GuestMemory
from engine.plan import HostBinding

SYSFS_NODE_ROOT = "/sys/devices/system/node"

MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 0, 1, 2, 3
POLICIES = {
    "default": MPOL_DEFAULT,
    "preferred": MPOL_PREFERRED,
    "bind": MPOL_BIND,
    "interleave": MPOL_INTERLEAVE,
}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}
MPOL_MF_STRICT = 1 << 0
MPOL_F_ADDR = 1 << 1
SYS_MBIND = 237
SYS_GET_MEMPOLICY = 239
MAX_NODES = 1024


def parse_node_list(text: str) -> set[int]:
    """The kernel's list format: ``0``, ``0-3``, ``0,2-3``."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def host_nodes(sysfs_root: str = SYSFS_NODE_ROOT) -> set[int]:
    """Online host NUMA nodes; a host without NUMA support has node 0 only."""
    try:
        return parse_node_list(Path(sysfs_root, "online").read_text())
    except OSError:
        return {0}


def check_host_nodes(bindings: Iterable[HostBinding], sysfs_root: str = SYSFS_NODE_ROOT) -> None:
    """Refuse a plan naming host nodes this host does not have (before the VM is built)."""
    have = host_nodes(sysfs_root)
    for b in bindings:
        if b.policy not in POLICIES:
            raise EngineError(
                f"memory binding at {b.guest_addr:#x}: unknown policy {b.policy!r}",
                hint=f"use one of {', '.join(POLICIES)}",
            )
        missing = sorted(set(b.host_nodes) - have)
        if missing:
            raise HostError(
                f"guest memory [{b.guest_addr:#x}, +{b.size:#x}) is bound to host node(s) "
                f"{', '.join(map(str, missing))}, but this host has node(s) "
                f"{', '.join(map(str, sorted(have)))}",
                hint="change host-nodes in the manifest's numa section to nodes listed in "
                f"{sysfs_root}/online",
            )


def _nodemask(nodes: Sequence[int]) -> object:
    words = ffi.new("unsigned long[]", MAX_NODES // 64)
    for n in nodes:
        words[n // 64] |= 1 << (n % 64)
    return words


def mbind(addr: int, length: int, policy: str, nodes: Sequence[int]) -> None:
    mode = POLICIES[policy]
    mask = _nodemask(nodes) if mode != MPOL_DEFAULT else ffi.NULL
    maxnode = MAX_NODES + 1 if mode != MPOL_DEFAULT else 0
    r = libc.syscall(
        ffi.cast("long", SYS_MBIND),
        ffi.cast("unsigned long", addr),
        ffi.cast("unsigned long", length),
        ffi.cast("int", mode),
        ffi.cast("unsigned long *", mask),
        ffi.cast("unsigned long", maxnode),
        ffi.cast("unsigned int", MPOL_MF_STRICT if mode == MPOL_BIND else 0),
    )
    if r < 0:
        import errno as _errno
        import os

        err = ffi.errno
        raise HostError(
            f"mbind({policy}, nodes {list(nodes)}) on {length:#x} bytes failed: "
            f"{_errno.errorcode.get(err, err)}: {os.strerror(err)}",
            hint="check the host's NUMA nodes and that memory is not locked elsewhere",
        )


def _host_pieces(mem: GuestMemory, guest_addr: int, size: int) -> list[tuple[int, int]]:
    """Host (addr, length) pieces behind a guest range (which may span regions)."""
    out = []
    cur, left = guest_addr, size
    while left > 0:
        r = mem.find_region(cur)
        if r is None:
            raise EngineError(f"NUMA binding [{guest_addr:#x}, +{size:#x}) is not guest RAM")
        n = min(left, r.end - cur)
        out.append((r.host_addr + (cur - r.guest_addr), n))
        cur += n
        left -= n
    return out


def bind_memory(mem: GuestMemory, bindings: Iterable[HostBinding]) -> None:
    for b in bindings:
        for addr, length in _host_pieces(mem, b.guest_addr, b.size):
            mbind(addr, length, b.policy, b.host_nodes)


def query_policy(addr: int) -> tuple[str, set[int]]:
    """``(policy, nodes)`` governing the host page at ``addr``."""
    mode = ffi.new("int *")
    mask = ffi.new("unsigned long[]", MAX_NODES // 64)
    r = libc.syscall(
        ffi.cast("long", SYS_GET_MEMPOLICY),
        mode,
        mask,
        ffi.cast("unsigned long", MAX_NODES),
        ffi.cast("void *", addr),
        ffi.cast("unsigned long", MPOL_F_ADDR),
    )
    if r < 0:
        import os

        raise OSError(ffi.errno, os.strerror(ffi.errno))
    nodes = {w * 64 + b for w in range(MAX_NODES // 64) for b in range(64) if mask[w] >> b & 1}
    return POLICY_NAMES.get(mode[0] & 0xFF, str(mode[0])), nodes
