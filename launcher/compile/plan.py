"""The engine plan: everything the builtin engine needs to build one VM, as frozen values.

The plan is the contract between the pure compile side and the engine process. It is printed by
``svlaunch plan`` and handed to ``python -m engine run --plan FILE`` as versioned JSON, so it
holds only plain values: absolute paths, byte sizes, guest physical addresses, IRQ numbers.
Addresses come from ``launcher.compile.layout``; topology and APIC ids from
``launcher.compile.topology``. ``compile_plan`` lives in ``launcher.compile.engine_plan``.
"""

from __future__ import annotations

import types

from launcher.frozen import field, fields_of, frozen

TYPE_CHECKING = False  # not typing's: the engine reads a plan at start-up, typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any, ClassVar

PLAN_VERSION = 1


# -- memory ----------------------------------------------------------------------------------


@frozen
class RamRange:
    """A guest-physical RAM range; ``node`` is the guest NUMA node that owns it (or None)."""

    guest_addr: int
    size: int
    node: int | None = None


@frozen
class HostBinding:
    """How a range of guest RAM is bound to host NUMA nodes (``mbind``)."""

    guest_addr: int
    size: int
    host_nodes: tuple[int, ...]
    policy: str  # default | preferred | bind | interleave


@frozen
class MemoryPlan:
    size: int
    ranges: tuple[RamRange, ...]
    mmio_hole: tuple[int, int]  # (start, size) of the 32-bit MMIO hole
    mem_path: str | None = None
    prealloc: bool = False
    shared: bool = False  # MAP_SHARED (machine mem-share)
    dump_guest_core: bool = True  # False: MADV_DONTDUMP
    bindings: tuple[HostBinding, ...] = ()


@frozen
class NumaNodePlan:
    id: int
    cpus: tuple[int, ...]
    size: int
    ranges: tuple[tuple[int, int], ...]  # guest-physical (addr, size) pieces
    host_nodes: tuple[int, ...] = ()
    policy: str = "default"


@frozen
class NumaPlan:
    nodes: tuple[NumaNodePlan, ...]
    distances: tuple[tuple[int, ...], ...]  # full matrix [src][dst], defaults filled (10/20)


# -- cpus ---------------------------------------------------------------------------------------


@frozen
class TopologyPlan:
    sockets: int
    dies: int
    clusters: int
    cores: int
    threads: int
    cpus: int
    maxcpus: int


@frozen
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


@frozen
class BootPlan:
    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@frozen
class ChardevPlan:
    id: str
    backend: str  # stdio | pty | socket | file
    path: str | None = None
    server: bool = False
    nowait: bool = False


@frozen
class SerialPlan:
    """The 8250 UART on COM1."""

    chardev: ChardevPlan
    port: int = 0x3F8
    irq: int = 4


@frozen
class DevicePlan:
    """Base of every virtio-mmio device: where it sits and which loop serves it."""

    kind: ClassVar[str] = ""
    id: str
    mmio_base: int
    irq: int
    iothread: str | None = None


@frozen
class BlkPlan(DevicePlan):
    kind: ClassVar[str] = "blk"
    file: str = ""
    readonly: bool = False
    direct: bool = True
    aio: str = "native"
    serial: str | None = None
    iops: int | None = None
    num_queues: int = 1
    queue_size: int = 256
    drive_id: str = ""


@frozen
class NetPlan(DevicePlan):
    kind: ClassVar[str] = "net"
    ifname: str | None = None
    fds: tuple[int, ...] = ()
    mac: str | None = None
    queue_pairs: int = 1
    mq: bool = False
    vhost: bool = False
    vhostfds: tuple[int, ...] = ()
    queue_size: int = 256
    netdev_id: str = ""


@frozen
class ConsolePlan(DevicePlan):
    """A virtconsole port (each is its own virtio-mmio device on microvm)."""

    kind: ClassVar[str] = "console"
    chardev: ChardevPlan | None = None


@frozen
class RngPlan(DevicePlan):
    kind: ClassVar[str] = "rng"
    file: str = "/dev/urandom"
    max_bytes: int | None = None
    period_ms: int | None = None


@frozen
class BalloonPlan(DevicePlan):
    kind: ClassVar[str] = "balloon"
    deflate_on_oom: bool = False
    free_page_reporting: bool = False


@frozen
class VsockPlan(DevicePlan):
    kind: ClassVar[str] = "vsock"
    guest_cid: int = 3
    vhostfd: int | None = None


@frozen
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


@frozen
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


@frozen
class HostFile:
    """A host file the VM uses (for the sandbox, `svlaunch check` and the rig)."""

    path: str
    role: str  # kernel | initrd | drive | chardev | mem-path | rng | trace | qmp | pidfile | log
    writable: bool = False


@frozen
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
    host_files: tuple[HostFile, ...] = ()
    version: int = PLAN_VERSION
    warnings: tuple[str, ...] = field(default=(), compare=False)

    # -- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    def dumps(self) -> str:
        import json

        return json.dumps(self.to_json(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ValueError(f"plan version {version!r} is not supported (expected {PLAN_VERSION})")
        return _from_json(cls, data)

    @classmethod
    def loads(cls, text: str) -> Plan:
        return cls.from_json(_json_loads(text))


def _to_json(value: Any) -> Any:
    if hasattr(type(value), "__record_fields__"):
        out: dict[str, Any] = {}
        if isinstance(value, DevicePlan):
            out["kind"] = type(value).kind
        for f in fields_of(value):
            out[f.name] = _to_json(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


class _JsonOptions:
    """What ``_json.make_scanner`` reads off ``json.JSONDecoder``: the defaults."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float  # float("NaN"), as json does


def _json_loads(text: str) -> Any:
    """``json.loads`` through the C scanner it uses: the engine reads its plan at start-up, and
    the ``json`` package costs ~5 ms there (it imports ``re`` and ``enum``). Errors, rare, get
    ``json``'s own message."""
    try:
        import _json

        value, end = _json.make_scanner(_JsonOptions)(text, 0)
        if text[end:].strip():
            raise ValueError("extra data")
        return value
    except (ImportError, StopIteration, ValueError):
        import json

        return json.loads(text)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(tp: type) -> dict[str, Any]:
    """Each field's type, from its annotation (``typing.get_type_hints`` without ``typing``:
    the annotations are this module's own strings, evaluated once among its names)."""
    hints = _HINTS.get(tp)
    if hints is None:
        hints = _HINTS[tp] = {f.name: eval(f.type, globals()) for f in fields_of(tp)}
    return hints


def _from_json(tp: Any, data: Any) -> Any:
    """Rebuild a value of type ``tp`` from its JSON form (driven by the field annotations)."""
    if data is None:
        return None
    if isinstance(tp, types.UnionType):  # X | None
        args = [a for a in tp.__args__ if a is not type(None)]
        return _from_json(args[0], data)
    if isinstance(tp, types.GenericAlias) and tp.__origin__ is tuple:
        args = tp.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v) for v in data)
        return tuple(_from_json(a, v) for a, v in zip(args, data, strict=True))
    if tp is DevicePlan:
        cls = DEVICE_KINDS[data["kind"]]
        return _from_json(cls, data)
    if hasattr(tp, "__record_fields__"):
        hints = _hints(tp)
        kwargs = {name: _from_json(t, data[name]) for name, t in hints.items() if name in data}
        return tp(**kwargs)
    return data
