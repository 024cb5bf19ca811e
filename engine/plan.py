"""The engine plan: everything the engine needs to build one VM, as frozen values.

The plan is the engine's contract: the launcher compiles a manifest into one
(``launcher.compile.engine_plan``, printed by ``svlaunch plan``) and hands it to
``python -m engine run --plan FILE`` as versioned JSON, so it holds only plain values: absolute
paths, byte sizes, guest physical addresses, IRQ numbers. Addresses come from
``engine.machine.layout``, APIC ids from ``engine.machine.apicid``. The engine never sees a
manifest; what it checks about a device (QMP hot-plug) it checks on these values
(``engine.device_rules``), and the launcher's validation uses the same rules.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.device_rules import DEFAULT_QUEUE_SIZE

PLAN_VERSION = 1


# -- memory ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RamRange:
    """A guest-physical RAM range; ``node`` is the guest NUMA node that owns it (or None)."""

    guest_addr: int
    size: int
    node: int | None = None


@dataclass(frozen=True, slots=True)
class HostBinding:
    """How a range of guest RAM is bound to host NUMA nodes (``mbind``)."""

    guest_addr: int
    size: int
    host_nodes: tuple[int, ...]
    policy: str  # default | preferred | bind | interleave


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    size: int
    ranges: tuple[RamRange, ...]
    mmio_hole: tuple[int, int]  # (start, size) of the 32-bit MMIO hole
    mem_path: str | None = None
    prealloc: bool = False
    shared: bool = False  # MAP_SHARED (machine mem-share)
    dump_guest_core: bool = True  # False: MADV_DONTDUMP
    bindings: tuple[HostBinding, ...] = ()


@dataclass(frozen=True, slots=True)
class NumaNodePlan:
    id: int
    cpus: tuple[int, ...]
    size: int
    ranges: tuple[tuple[int, int], ...]  # guest-physical (addr, size) pieces
    host_nodes: tuple[int, ...] = ()
    policy: str = "default"


@dataclass(frozen=True, slots=True)
class NumaPlan:
    nodes: tuple[NumaNodePlan, ...]
    distances: tuple[tuple[int, ...], ...]  # full matrix [src][dst], defaults filled (10/20)


# -- cpus ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopologyPlan:
    sockets: int
    dies: int
    clusters: int
    cores: int
    threads: int
    cpus: int
    maxcpus: int


@dataclass(frozen=True, slots=True)
class VcpuPlan:
    index: int
    apic_id: int
    package: int
    die: int
    cluster: int
    core: int
    thread: int
    node: int | None = None


# -- boot, chardevs, devices --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootPlan:
    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@dataclass(frozen=True, slots=True)
class ChardevPlan:
    id: str
    backend: str  # stdio | pty | socket | file
    path: str | None = None
    server: bool = False
    nowait: bool = False


@dataclass(frozen=True, slots=True)
class SerialPlan:
    """The 8250 UART on COM1."""

    chardev: ChardevPlan
    port: int = 0x3F8
    irq: int = 4


@dataclass(frozen=True, slots=True)
class PvpanicPlan:
    """The pvpanic device (``engine.machine.pvpanic``) and what the engine does when the guest
    reports a panic: ``poweroff`` (stop; SHUTDOWN reason guest-panic), ``pause`` (the VM stays,
    paused, in state guest-panicked) or ``run`` (only the event). Its port is
    ``engine.machine.layout.PVPANIC_PORT``."""

    on_panic: str = "poweroff"  # one of PANIC_ACTIONS


#: the panic actions, named as QMP's GUEST_PANICKED reports them (QEMU's GuestPanicAction)
PANIC_ACTIONS = ("poweroff", "pause", "run")


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Base of every virtio-mmio device: where it sits and which loop serves it."""

    kind: ClassVar[str] = ""
    id: str
    mmio_base: int
    irq: int
    iothread: str | None = None


@dataclass(frozen=True, slots=True)
class BlkPlan(DevicePlan):
    kind: ClassVar[str] = "blk"
    file: str = ""
    readonly: bool = False
    direct: bool = True
    aio: str = "native"
    discard: str = "ignore"  # ignore | unmap
    serial: str | None = None
    iops: int | None = None
    num_queues: int = 1
    queue_size: int = DEFAULT_QUEUE_SIZE
    drive_id: str = ""


@dataclass(frozen=True, slots=True)
class NetPlan(DevicePlan):
    kind: ClassVar[str] = "net"
    ifname: str | None = None
    fds: tuple[int, ...] = ()
    mac: str | None = None
    queue_pairs: int = 1
    mq: bool = False
    vhost: bool = False
    vhostfds: tuple[int, ...] = ()
    queue_size: int = DEFAULT_QUEUE_SIZE
    netdev_id: str = ""


@dataclass(frozen=True, slots=True)
class ConsolePlan(DevicePlan):
    """A virtconsole port (each is its own virtio-mmio device on microvm)."""

    kind: ClassVar[str] = "console"
    chardev: ChardevPlan | None = None


@dataclass(frozen=True, slots=True)
class RngPlan(DevicePlan):
    kind: ClassVar[str] = "rng"
    file: str = "/dev/urandom"
    max_bytes: int | None = None
    period_ms: int | None = None


@dataclass(frozen=True, slots=True)
class BalloonPlan(DevicePlan):
    kind: ClassVar[str] = "balloon"
    deflate_on_oom: bool = False
    free_page_reporting: bool = False


@dataclass(frozen=True, slots=True)
class VsockPlan(DevicePlan):
    kind: ClassVar[str] = "vsock"
    guest_cid: int = 3
    vhostfd: int | None = None


@dataclass(frozen=True, slots=True)
class SlotPlan(DevicePlan):
    """An empty replaceable virtio-mmio transport (device id 0) that QMP hot-replace fills.

    StratoVirt's microvm pre-creates 4 block and 2 net transports; the guest sees them in the
    DSDT from boot, and ``blockdev-add``/``netdev_add`` + ``device_add`` put a device into one.
    """

    kind: ClassVar[str] = "slot"
    accepts: str = "blk"  # blk | net


DEVICE_KINDS: dict[str, type[DevicePlan]] = {
    c.kind: c for c in (BlkPlan, NetPlan, ConsolePlan, RngPlan, BalloonPlan, VsockPlan, SlotPlan)
}


# -- control and sandbox ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxPlan:
    """The manifest's ozone section, resolved (jail path, uid/gid, caps, cgroups...)."""

    name: str
    exec_file: str
    uid: int
    gid: int
    root: str  # jail base folder, e.g. /srv/ozone
    capabilities: tuple[str, ...] | None = None
    netns: str | None = None
    sources: tuple[str, ...] = ()
    numa: str | None = None
    cgroup: tuple[tuple[str, str], ...] = ()
    clean_resource: bool = False


@dataclass(frozen=True, slots=True)
class HostFile:
    """A host file the VM uses (for the sandbox, `svlaunch check` and the rig)."""

    path: str
    role: str  # kernel | initrd | drive | chardev | mem-path | rng | trace | qmp | pidfile | log
    # | snapshot (the folder incoming restores from)
    writable: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    arch: str
    machine: str
    topology: TopologyPlan
    vcpus: tuple[VcpuPlan, ...]
    memory: MemoryPlan
    boot: BootPlan
    numa: NumaPlan | None = None
    serial: SerialPlan | None = None
    chardevs: tuple[ChardevPlan, ...] = ()
    devices: tuple[DevicePlan, ...] = ()
    iothreads: tuple[str, ...] = ()
    qmp: tuple[str, ...] = ()  # unix socket paths
    paused: bool = False
    incoming: str | None = None
    seccomp: bool = True
    daemonize: bool = False
    pidfile: str | None = None
    log_file: str | None = None  # None and log=True: stdout
    log: bool = False
    sandbox: SandboxPlan | None = None
    pvpanic: PvpanicPlan | None = None
    host_files: tuple[HostFile, ...] = ()
    version: int = PLAN_VERSION
    warnings: tuple[str, ...] = field(default=(), compare=False)

    # -- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ValueError(f"plan version {version!r} is not supported (expected {PLAN_VERSION})")
        return _from_json(cls, data)

    @classmethod
    def loads(cls, text: str) -> Plan:
        return cls.from_json(json.loads(text))


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {}
        if isinstance(value, DevicePlan):
            out["kind"] = type(value).kind
        for f in dataclasses.fields(value):
            out[f.name] = _to_json(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    """Each init field's type, from its annotation (evaluated once per class)."""
    hints = typing.get_type_hints(tp)
    return {f.name: hints[f.name] for f in dataclasses.fields(tp) if f.init}


def _from_json(tp: Any, data: Any) -> Any:
    """Rebuild a value of type ``tp`` from its JSON form (driven by the field annotations)."""
    if data is None:
        return None
    if isinstance(tp, types.UnionType):  # X | None
        members = [a for a in tp.__args__ if a is not type(None)]
        return _from_json(members[0], data)
    if isinstance(tp, types.GenericAlias) and tp.__origin__ is tuple:
        items = tp.__args__
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_from_json(items[0], v) for v in data)
        return tuple(_from_json(a, v) for a, v in zip(items, data, strict=True))
    if tp is DevicePlan:
        cls = DEVICE_KINDS[data["kind"]]
        return _from_json(cls, data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {name: _from_json(t, data[name]) for name, t in hints.items() if name in data}
        return tp(**kwargs)
    return data
