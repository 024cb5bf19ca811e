"""Virtio devices of the manifest: drives, NICs, virtio-serial and consoles, vsock, balloon, rng.

Part of ``launcher.model`` (which re-exports every name and loads this module on first use). The
per-device limits are the engine's (``engine.device_rules``): QMP hot-plug checks a device with
the same ``IntRange`` values the declarations here name, so cold-plug and hot-plug agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import device_rules as rules
from launcher.keys import (
    BALLOON_TARGET,
    FDS,
    HOT_REPLACE_DISK,
    HOT_REPLACE_NIC,
    PATH,
    PCI,
    REQUIRED,
    SIZE,
    key,
)
from launcher.model_enums import Aio, Discard, NetType, Transport

BOOTINDEX = rules.IntRange(0, 255)
GUEST_CID = rules.IntRange(3, 2**32 - 2)  # 0-2 are the hypervisor, local and host


def transport() -> Any:
    """The ``transport`` key every virtio device has."""
    return key(
        None,
        "virtio transport: mmio (``*-device``) or pci (``*-pci``); default: mmio on microvm,"
        " pci on q35/virt.",
        sv="-device <name>-device | <name>-pci",
    )


def placement() -> Any:
    """The optional PCI placement (``bus``, ``addr``, ``multifunction``) of a virtio device."""
    return key(None, "PCI placement (pci transport only).", kind=PCI)


@dataclass(frozen=True, slots=True)
class PciAddress:
    """PCI placement of a ``*-pci`` device: ``bus`` and ``addr`` are required for PCI.

    A value, not a table of its own: its keys (``bus``, ``addr``, ``multifunction``) sit in the
    device's table, as StratoVirt has them in the device's property list.
    """

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

    id: str = key(REQUIRED, "Drive id.", sv=("-drive", "id"), plan="BlkPlan.drive_id")
    file: str = key(
        REQUIRED,
        "Disk image or block device on the host.",
        kind=PATH,
        io="input",
        sv=("-drive", "file"),
        plan="BlkPlan.file",
        apply=HOT_REPLACE_DISK,
    )
    readonly: bool = key(
        False,
        "Open the image read-only.",
        sv=("-drive", "readonly"),
        plan="BlkPlan.readonly",
        apply=HOT_REPLACE_DISK,
    )
    direct: bool = key(
        True,
        "Open with O_DIRECT.",
        sv=("-drive", "direct"),
        plan="BlkPlan.direct",
        apply=HOT_REPLACE_DISK,
    )
    aio: Aio | None = key(
        None,
        "Async I/O engine; default native when direct, else off.",
        sv=("-drive", "aio"),
        plan="BlkPlan.aio",
    )
    format: str = key(
        "raw",
        "Image format (StratoVirt v2.2.0 supports raw only).",
        values=("raw", "qcow2"),
        sv=("-drive", "format"),
    )
    iops: int | None = key(
        None,
        "I/O operations per second limit.",
        limits=rules.IOPS,
        rule="drive-iops",
        sv=("-drive", "throttling.iops-total"),
        plan="BlkPlan.iops",
        apply=HOT_REPLACE_DISK,
    )
    discard: Discard = key(
        Discard.IGNORE,
        "Guest discard (TRIM) requests: unmap punches holes in the image (offers virtio-blk"
        " discard and write-zeroes), ignore offers neither (StratoVirt v2.2's device).",
        sv=("-drive", "discard"),
        plan="BlkPlan.discard",
    )
    bootindex: int | None = key(
        None,
        "Boot order for firmware (lower boots first).",
        limits=BOOTINDEX,
        rule="bootindex",
        sv=("virtio-blk", "bootindex", "u8"),
    )
    serial: str | None = key(
        None,
        f"Serial number the guest sees (at most {rules.MAX_SERIAL} bytes).",
        sv=("virtio-blk", "serial"),
        plan="BlkPlan.serial",
        apply=HOT_REPLACE_DISK,
    )
    iothread: str | None = key(
        None,
        "Iothread (declared in iothreads) that serves the disk.",
        sv=("virtio-blk", "iothread"),
        plan="BlkPlan.iothread",
        apply=HOT_REPLACE_DISK,
    )
    queues: int | None = key(
        None,
        "Number of virtqueues; default 1 on mmio, min(cpus, 32) on pci.",
        limits=rules.BLK_QUEUES,
        rule="drive-queues",
        sv=("virtio-blk", "num-queues", "u16"),
        plan="BlkPlan.num_queues",
        apply=HOT_REPLACE_DISK,
    )
    queue_size: int = key(
        rules.DEFAULT_QUEUE_SIZE,
        "Virtqueue size.",
        limits=rules.BLK_QUEUE_SIZE,
        rule="queue-size",
        sv=("virtio-blk", "queue-size", "u16"),
        plan="BlkPlan.queue_size",
        apply=HOT_REPLACE_DISK,
    )
    attached: bool = key(
        True,
        "Create the virtio-blk device (false: backend only, for hot plug).",
        apply=HOT_REPLACE_DISK,
    )
    device_id: str | None = key(
        None,
        "Device id, if it must differ from the drive id.",
        nonempty=True,
        sv="-device virtio-blk-*,id=",
        plan="BlkPlan.id",
        apply=HOT_REPLACE_DISK,
    )
    transport: Transport | None = transport()
    pci: PciAddress | None = placement()

    @property
    def device_name(self) -> str:
        return self.device_id or self.id


@dataclass(frozen=True, slots=True)
class Net:
    """A network backend (``-netdev``) and, unless ``attached`` is false, its virtio-net device."""

    id: str = key(REQUIRED, "Netdev id.", sv=("-netdev", "id"), plan="NetPlan.netdev_id")
    type: NetType = key(NetType.TAP, "Backend type.", sv="-netdev <type>")
    ifname: str | None = key(
        None,
        f"Host tap device name (at most {rules.MAX_IFNAME} bytes).",
        nonempty=True,
        sv=("-netdev", "ifname"),
        plan="NetPlan.ifname",
        apply=HOT_REPLACE_NIC,
    )
    fds: tuple[int, ...] = key(
        (),
        "Inherited tap file descriptors, one per queue pair.",
        kind=FDS,
        sv=("-netdev", "fds", "i32"),
        plan="NetPlan.fds",
        apply=HOT_REPLACE_NIC,
    )
    vhost: bool | None = key(
        None,
        "Use the vhost-net kernel backend.",
        sv=("-netdev", "vhost"),
        plan="NetPlan.vhost",
        snapshot="StratoVirt does not snapshot vhost-net (its rings are kernel state)",
    )
    vhostfds: tuple[int, ...] = key(
        (),
        "Inherited /dev/vhost-net file descriptors (needs vhost).",
        kind=FDS,
        sv=("-netdev", "vhostfds", "i32"),
        plan="NetPlan.vhostfds",
    )
    queues: int | None = key(
        None,
        "Queue pairs.",
        limits=rules.NET_QUEUE_PAIRS,
        rule="net-queues",
        sv=("-netdev", "queues", "u16"),
        plan="NetPlan.queue_pairs",
        apply=HOT_REPLACE_NIC,
    )
    chardev: str | None = key(
        None, "Socket chardev of a vhost-user backend (a client socket).", sv=("-netdev", "chardev")
    )
    attached: bool = key(
        True, "Create the virtio-net device (false: backend only).", apply=HOT_REPLACE_NIC
    )
    device_id: str | None = key(
        None,
        "Device id, if it must differ from the netdev id.",
        nonempty=True,
        sv="-device virtio-net-*,id=",
        plan="NetPlan.id",
        apply=HOT_REPLACE_NIC,
    )
    mac: str | None = key(
        None,
        "Guest MAC address, six hex pairs: 52:54:00:12:34:56.",
        sv=("virtio-net", "mac"),
        plan="NetPlan.mac",
        apply=HOT_REPLACE_NIC,
    )
    mq: bool = key(
        False,
        "Enable multiqueue in the guest.",
        sv=("virtio-net", "mq"),
        plan="NetPlan.mq",
        apply=HOT_REPLACE_NIC,
    )
    iothread: str | None = key(
        None,
        "Iothread that serves the NIC (ignored with vhost).",
        sv=("virtio-net", "iothread"),
        plan="NetPlan.iothread",
        apply=HOT_REPLACE_NIC,
    )
    queue_size: int = key(
        rules.DEFAULT_QUEUE_SIZE,
        "Virtqueue size.",
        limits=rules.NET_QUEUE_SIZE,
        rule="queue-size",
        sv=("virtio-net", "queue-size", "u16"),
        plan="NetPlan.queue_size",
        apply=HOT_REPLACE_NIC,
    )
    transport: Transport | None = transport()
    pci: PciAddress | None = placement()

    @property
    def device_name(self) -> str:
        return self.device_id or self.id


@dataclass(frozen=True, slots=True)
class VirtioSerial:
    """The virtio-serial transport that consoles hang off (one per VM)."""

    id: str | None = key(
        None,
        "Device id (required on standard VMs).",
        nonempty=True,
        sv="-device virtio-serial-*,id=",
    )
    transport: Transport | None = transport()
    pci: PciAddress | None = placement()


@dataclass(frozen=True, slots=True)
class Console:
    """A ``virtconsole`` on a chardev."""

    id: str = key(REQUIRED, "Console id.", sv=("virtconsole", "id"), plan="ConsolePlan.id")
    chardev: str = key(
        REQUIRED,
        "Chardev it uses (consumed).",
        sv=("virtconsole", "chardev"),
        plan="ConsolePlan.chardev",
    )


@dataclass(frozen=True, slots=True)
class Vsock:
    """``-device vhost-vsock-*``: the guest's AF_VSOCK address (one per VM)."""

    guest_cid: int = key(
        REQUIRED,
        "Guest context id, unique on the host.",
        limits=GUEST_CID,
        rule="vsock-cid",
        sv=("vhost-vsock", "guest-cid"),
        plan="VsockPlan.guest_cid",
    )
    id: str = key(
        "vsock0", "Device id.", nonempty=True, sv="-device vhost-vsock-*,id=", plan="VsockPlan.id"
    )
    vhostfd: int | None = key(
        None,
        "Inherited /dev/vhost-vsock descriptor.",
        sv=("vhost-vsock", "vhostfd", "i32"),
        plan="VsockPlan.vhostfd",
    )
    transport: Transport | None = transport()
    pci: PciAddress | None = placement()


@dataclass(frozen=True, slots=True)
class Balloon:
    """``-device virtio-balloon-*`` (one per VM); its target is set over QMP (``balloon``)."""

    id: str | None = key(
        None,
        "Device id (required on standard VMs).",
        nonempty=True,
        sv="-device virtio-balloon-*,id=",
        plan="BalloonPlan.id",
    )
    deflate_on_oom: bool = key(
        False,
        "Deflate when the guest runs out of memory.",
        sv=("virtio-balloon", "deflate-on-oom"),
        plan="BalloonPlan.deflate_on_oom",
    )
    free_page_reporting: bool = key(
        False,
        "Let the guest report free pages.",
        sv=("virtio-balloon", "free-page-reporting"),
        plan="BalloonPlan.free_page_reporting",
    )
    transport: Transport | None = transport()
    pci: PciAddress | None = placement()
    target: int | None = key(
        None,
        "The guest memory svlaunch asks the balloon to leave the guest (QMP balloon, right"
        " after start and live on a change; at most memory.size). Absent: no ballooning.",
        kind=SIZE,
        apply=BALLOON_TARGET,
    )


@dataclass(frozen=True, slots=True)
class Rng:
    """``-object rng-random`` (id, file) and its ``virtio-rng`` device."""

    id: str = key(REQUIRED, "rng-random object id.", sv=("rng-random", "id"))
    file: str = key(
        "/dev/urandom",
        "Host entropy source.",
        kind=PATH,
        io="input",
        sv="-object rng-random,filename=",
        plan="RngPlan.file",
    )
    max_bytes: int | None = key(
        None,
        "Bytes allowed per period (with period).",
        sv=("virtio-rng", "max-bytes"),
        plan="RngPlan.max_bytes",
    )
    period: int | None = key(
        None,
        "Rate-limit period in milliseconds (with max-bytes).",
        sv=("virtio-rng", "period"),
        plan="RngPlan.period_ms",
    )
    device_id: str | None = key(
        None,
        "Device id, if it must differ from the object id.",
        nonempty=True,
        sv="-device virtio-rng-*,id=",
        plan="RngPlan.id",
    )
    transport: Transport | None = transport()
    pci: PciAddress | None = placement()
