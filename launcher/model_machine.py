"""The machine-level sections of a manifest: ``[machine]``, ``[cpu]``, ``[memory]``, ``[numa]``,
``[boot]`` (and the derived topology).

Part of ``launcher.model``, which re-exports every name (see its docstring for how keys are
declared).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.machine.layout import CMDLINE_MAX_SIZE
from launcher.keys import LIST, PATH, SIZE, TEXT, key
from launcher.model_enums import MachineType

if TYPE_CHECKING:
    from launcher.model_numa import MemoryZone, NumaDistance, NumaNode


@dataclass(frozen=True, slots=True)
class Machine:
    """``-machine``: type and global switches."""

    type: MachineType = key(
        MachineType.MICROVM,
        "Machine type: microvm, q35 (x86_64) or virt (aarch64); none only answers QMP.",
        sv="-machine <type>",
        plan="Plan.machine",
    )
    dump_guest_core: bool = key(
        True,
        "Include guest memory in core dumps.",
        sv=("-machine", "dump-guest-core"),
        plan="MemoryPlan.dump_guest_core",
    )
    mem_share: bool = key(
        False,
        "Share guest memory with other processes (vhost-user).",
        sv=("-machine", "mem-share"),
        plan="MemoryPlan.shared",
        snapshot="StratoVirt does not snapshot shared guest memory",
    )
    accel: str | None = key(
        None,
        "Accelerator (KVM is always used).",
        values=("kvm", "kvm:tcg", "tcg"),
        sv=("-machine", "accel"),
    )
    usb: bool | None = key(
        None, "Machine USB switch; StratoVirt only accepts false.", sv=("-machine", "usb")
    )
    gic_version: int | None = key(
        None, "aarch64 GIC version (only 3).", sv=("-machine", "gic-version")
    )


@dataclass(frozen=True, slots=True)
class Cpu:
    """``-smp`` and ``-cpu``. Unset topology factors (``None``) are derived as StratoVirt does."""

    cpus: int = key(1, "Online vCPUs (1-254).", sv="-smp [cpus=]<n>", plan="TopologyPlan.cpus")
    maxcpus: int | None = key(
        None,
        "Maximum vCPUs (1-254); default: the topology product or cpus. The builtin engine has no vCPU hot-plug: it refuses maxcpus > cpus.",
        sv=("-smp", "maxcpus"),
        plan="TopologyPlan.maxcpus",
    )
    sockets: int | None = key(None, "Sockets.", sv=("-smp", "sockets"), plan="TopologyPlan.sockets")
    dies: int | None = key(None, "Dies per socket.", sv=("-smp", "dies"), plan="TopologyPlan.dies")
    clusters: int | None = key(
        None, "Clusters per die.", sv=("-smp", "clusters"), plan="TopologyPlan.clusters"
    )
    cores: int | None = key(
        None, "Cores per cluster.", sv=("-smp", "cores"), plan="TopologyPlan.cores"
    )
    threads: int | None = key(
        None, "Threads per core.", sv=("-smp", "threads"), plan="TopologyPlan.threads"
    )
    model: str | None = key(
        None, 'CPU model; StratoVirt documents "host".', sv="-cpu <model>", nonempty=True
    )
    pmu: bool | None = key(None, "Expose the PMU (aarch64 only).", sv=("-cpu", "pmu"))


@dataclass(frozen=True, slots=True)
class Topology:
    """The resolved topology (StratoVirt's ``adjust_topology``); derived, never written by users."""

    cpus: int
    maxcpus: int
    sockets: int
    dies: int
    clusters: int
    cores: int
    threads: int


@dataclass(frozen=True, slots=True)
class Memory:
    """``-m``, ``-mem-path``, ``-mem-prealloc`` and node-less memory zones."""

    size: int = key(
        256 << 20,
        "Guest RAM size (128 MiB-512 GiB, a multiple of 1 MiB).",
        kind=SIZE,
        sv="-m",
        plan="MemoryPlan.size",
    )
    path: str | None = key(
        None,
        "Backing file or directory, e.g. a hugetlbfs mount.",
        kind=PATH,
        io="input",
        sv="-mem-path",
        plan="MemoryPlan.mem_path",
        snapshot="StratoVirt does not snapshot hugepage or file-backed guest memory",
    )
    prealloc: bool = key(
        False, "Fault in all guest RAM at start.", sv="-mem-prealloc", plan="MemoryPlan.prealloc"
    )
    zones: tuple[MemoryZone, ...] = key(
        (),
        "Memory zones not tied to a NUMA node (bound to host nodes all the same).",
        kind=LIST,
        item="A memory-backend-ram object.",
        sv="-object memory-backend-ram",
    )


@dataclass(frozen=True, slots=True)
class Numa:
    """The guest NUMA topology: nodes (each with its memory object) and distances."""

    nodes: tuple[NumaNode, ...] = key(
        (),
        "NUMA nodes, each with its own memory-backend-ram.",
        kind=LIST,
        item="A NUMA node.",
        sv="-object memory-backend-ram + -numa node",
    )
    distances: tuple[NumaDistance, ...] = key(
        (),
        "Distances between nodes; missing pairs default to 10 (local) and 20.",
        kind=LIST,
        item="A distance entry.",
        sv="-numa dist",
    )


@dataclass(frozen=True, slots=True)
class Boot:
    """Direct kernel boot: ``-kernel``, ``-initrd``, ``-append``."""

    kernel: str | None = key(
        None,
        "Guest kernel (vmlinux, bzImage or arm64 Image).",
        kind=PATH,
        io="input",
        sv="-kernel",
        plan="BootPlan.kernel",
    )
    initrd: str | None = key(
        None,
        "Initial ramdisk (path at most 255 bytes).",
        kind=PATH,
        io="input",
        sv="-initrd",
        plan="BootPlan.initrd",
    )
    cmdline: str | None = key(
        None,
        f"Kernel command line (at most {CMDLINE_MAX_SIZE - 1} bytes); a list is joined with"
        " spaces.",
        kind=TEXT,
        sv="-append",
        plan="BootPlan.cmdline",
    )
