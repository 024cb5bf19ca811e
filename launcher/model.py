"""The validated manifest: typed, frozen values with StratoVirt's defaults filled in.

One structure serves TOML and YAML. Collections the user keys by id (``[drives.root]``) become
tuples of entries carrying their ``id`` in declaration order: order matters to StratoVirt (argv
order, memory-zone layout) and to readable diffs. Fields are ``None`` only where StratoVirt's
default depends on other fields (``aio``, ``num_queues``, ``transport``, ``mac``...); everything
else holds the effective value. Paths are absolute (resolved against the manifest's folder).

Nothing here does I/O. ``launcher.manifest`` builds these from a file; ``launcher.compile``
turns them into a StratoVirt argv or an engine plan; ``launcher.compile.importer`` builds them
back from an argv. Keep field names equal to the manifest keys with ``-`` → ``_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.model_enums import (  # re-exported: the model's value sets are imported from here
    Aio,
    Arch,
    ChardevBackend,
    MachineType,
    NetType,
    NumaPolicy,
    Transport,
)

__all__ = [
    "Aio",
    "Arch",
    "ChardevBackend",
    "MachineType",
    "NetType",
    "NumaPolicy",
    "Transport",
]


# -- machine, cpu, memory ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Machine:
    """``-machine``: type and global switches."""

    type: MachineType = MachineType.MICROVM
    dump_guest_core: bool = True
    mem_share: bool = False
    accel: str | None = None  # "kvm" | "kvm:tcg" | "tcg" (accepted, KVM is always used)
    usb: bool | None = None  # StratoVirt only accepts off
    gic_version: int | None = None  # aarch64 only: 3


@dataclass(frozen=True, slots=True)
class Cpu:
    """``-smp`` and ``-cpu``. Unset topology factors (``None``) are derived as StratoVirt does."""

    cpus: int = 1
    maxcpus: int | None = None
    sockets: int | None = None
    dies: int | None = None
    clusters: int | None = None
    cores: int | None = None
    threads: int | None = None
    model: str | None = None  # -cpu <model>; StratoVirt documents "host"
    pmu: bool | None = None  # -cpu ...,pmu=on|off (aarch64 only effective)


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
class MemoryZone:
    """``-object memory-backend-ram`` not tied to a NUMA node (laid out and bound all the same)."""

    id: str
    size: int
    host_nodes: tuple[int, ...]
    policy: NumaPolicy


@dataclass(frozen=True, slots=True)
class Memory:
    """``-m``, ``-mem-path``, ``-mem-prealloc`` and node-less memory zones."""

    size: int = 256 << 20
    path: str | None = None
    prealloc: bool = False
    zones: tuple[MemoryZone, ...] = ()


@dataclass(frozen=True, slots=True)
class NumaNode:
    """``-numa node`` plus the ``memory-backend-ram`` object it uses (declared once, here)."""

    id: int
    cpus: tuple[int, ...]
    size: int
    host_nodes: tuple[int, ...]
    policy: NumaPolicy
    memdev: str | None = None  # object id; default "mem<id>"

    @property
    def memdev_id(self) -> str:
        return self.memdev or f"mem{self.id}"


@dataclass(frozen=True, slots=True)
class NumaDistance:
    src: int
    dst: int
    val: int


@dataclass(frozen=True, slots=True)
class Numa:
    nodes: tuple[NumaNode, ...] = ()
    distances: tuple[NumaDistance, ...] = ()


@dataclass(frozen=True, slots=True)
class Boot:
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None  # -append, joined with single spaces


# -- devices -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PciAddress:
    """PCI placement of a ``*-pci`` device: ``bus`` and ``addr`` are required for PCI."""

    bus: str
    slot: int
    function: int = 0
    multifunction: bool | None = None

    @property
    def addr(self) -> str:
        return f"{self.slot:#x}" if self.function == 0 else f"{self.slot:#x}.{self.function:#x}"


@dataclass(frozen=True, slots=True)
class Drive:
    """A block drive: the ``-drive`` backend and, unless ``attached`` is false, its virtio-blk device."""

    id: str
    file: str
    readonly: bool = False
    direct: bool = True
    aio: Aio | None = None  # default: native if direct else off
    format: str = "raw"
    iops: int | None = None  # throttling.iops-total
    attached: bool = True
    device_id: str | None = None  # default: the drive id
    serial: str | None = None
    iothread: str | None = None
    num_queues: int | None = None  # default: 1 on MMIO, min(cpus, 32) on PCI
    queue_size: int = 256
    bootindex: int | None = None
    transport: Transport | None = None  # default: by machine type
    pci: PciAddress | None = None

    @property
    def device_name(self) -> str:
        return self.device_id or self.id


@dataclass(frozen=True, slots=True)
class Net:
    """A network backend (``-netdev``) and, unless ``attached`` is false, its virtio-net device."""

    id: str
    type: NetType = NetType.TAP
    ifname: str | None = None
    fds: tuple[int, ...] = ()
    vhost: bool | None = None
    vhostfds: tuple[int, ...] = ()
    queues: int | None = None  # queue pairs
    chardev: str | None = None  # vhost-user socket chardev
    attached: bool = True
    device_id: str | None = None
    mac: str | None = None
    mq: bool = False
    iothread: str | None = None
    queue_size: int = 256
    transport: Transport | None = None
    pci: PciAddress | None = None

    @property
    def device_name(self) -> str:
        return self.device_id or self.id


@dataclass(frozen=True, slots=True)
class Chardev:
    """``-chardev`` (and the inline ``-serial`` backend)."""

    id: str
    backend: ChardevBackend
    path: str | None = None
    server: bool = False
    nowait: bool = False


@dataclass(frozen=True, slots=True)
class VirtioSerial:
    """The virtio-serial transport that consoles hang off (one per VM)."""

    id: str | None = None
    transport: Transport | None = None
    pci: PciAddress | None = None


@dataclass(frozen=True, slots=True)
class Console:
    """A ``virtconsole`` on a chardev."""

    id: str
    chardev: str


@dataclass(frozen=True, slots=True)
class Vsock:
    id: str
    guest_cid: int
    vhostfd: int | None = None
    transport: Transport | None = None
    pci: PciAddress | None = None


@dataclass(frozen=True, slots=True)
class Balloon:
    id: str | None = None
    deflate_on_oom: bool = False
    free_page_reporting: bool = False
    transport: Transport | None = None
    pci: PciAddress | None = None


@dataclass(frozen=True, slots=True)
class Rng:
    """``-object rng-random`` (id, file) and its ``virtio-rng`` device."""

    id: str
    file: str = "/dev/urandom"
    max_bytes: int | None = None
    period: int | None = None  # milliseconds
    device_id: str | None = None
    transport: Transport | None = None
    pci: PciAddress | None = None


@dataclass(frozen=True, slots=True)
class RootPort:
    id: str
    port: int
    pci: PciAddress
    chassis: int | None = None


@dataclass(frozen=True, slots=True)
class Pflash:
    unit: int
    file: str
    readonly: bool = False
    format: str = "raw"


@dataclass(frozen=True, slots=True)
class Vfio:
    id: str
    pci: PciAddress
    host: str | None = None
    sysfsdev: str | None = None


@dataclass(frozen=True, slots=True)
class UsbController:
    id: str
    pci: PciAddress
    p2: int | None = None
    p3: int | None = None


@dataclass(frozen=True, slots=True)
class UsbDevice:
    id: str


@dataclass(frozen=True, slots=True)
class Usb:
    xhci: UsbController | None = None
    keyboard: UsbDevice | None = None
    tablet: UsbDevice | None = None


# -- control, logging, sandbox ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Monitor:
    """``-mon chardev=<id>,id=<id>,mode=control``: QMP on a declared socket chardev."""

    chardev: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Log:
    """``-D [file]``: no file means stdout (StratoVirt's behaviour; the guidebook says stderr)."""

    file: str | None = None


@dataclass(frozen=True, slots=True)
class Ozone:
    """The ozone sandbox the VM runs in."""

    exec_file: str
    uid: int
    gid: int
    name: str | None = None  # default: the VM name
    capabilities: tuple[str, ...] | None = None  # None: drop all
    netns: str | None = None
    sources: tuple[str, ...] = ()  # extra files placed in the jail
    numa: str | None = None  # host node(s) for cpuset.mems
    cgroup: tuple[
        tuple[str, str], ...
    ] = ()  # (("cpuset.cpus", "0-3"), ("memory.limit_in_bytes", "1G"))
    clean_resource: bool = False
    root: str = "/srv/ozone"  # svlaunch extension: jail base folder


@dataclass(frozen=True, slots=True)
class Manifest:
    """A whole VM. ``source`` is the manifest file (for messages); ``base_dir`` resolves paths."""

    name: str
    arch: Arch = Arch.X86_64
    machine: Machine = field(default_factory=Machine)
    cpu: Cpu = field(default_factory=Cpu)
    memory: Memory = field(default_factory=Memory)
    numa: Numa = field(default_factory=Numa)
    boot: Boot = field(default_factory=Boot)
    fast_unplug: bool | None = None  # -global pcie-root-port.fast-unplug=0|1
    log: Log | None = None
    daemonize: bool = False
    pidfile: str | None = None
    iothreads: tuple[str, ...] = ()
    drives: tuple[Drive, ...] = ()
    nets: tuple[Net, ...] = ()
    chardevs: tuple[Chardev, ...] = ()
    serial: Chardev | None = None  # inline -serial backend (id "serial_chardev")
    virtio_serial: VirtioSerial | None = None
    consoles: tuple[Console, ...] = ()
    vsock: Vsock | None = None
    balloon: Balloon | None = None
    rngs: tuple[Rng, ...] = ()
    root_ports: tuple[RootPort, ...] = ()
    pflash: tuple[Pflash, ...] = ()
    vfio: tuple[Vfio, ...] = ()
    usb: Usb = field(default_factory=Usb)
    trace: str | None = None  # -trace events=<file>
    seccomp: bool = True
    paused: bool = False  # -S
    incoming: str | None = None
    qmp: tuple[str, ...] = ()  # -qmp unix:<path>,server,nowait
    monitors: tuple[Monitor, ...] = ()
    ozone: Ozone | None = None
    source: str = field(default="<memory>", compare=False)
    base_dir: str = field(default=".", compare=False)
