"""The validated manifest: typed, frozen values, each manifest key declared once on its field.

One structure serves TOML and YAML. A field's name is its manifest key with ``-`` → ``_``; its
``key(...)`` declaration (``launcher.keys``) carries the key's default, limits, documentation,
StratoVirt spelling, plan field and apply mode, and the schema, docs, loader, dumper, argv
compiler and plan builder all read it from there. Collections the user keys by id
(``[drives.root]``) become tuples of entries carrying their ``id`` in declaration order: order
matters to StratoVirt (argv order, memory-zone layout) and to readable diffs. Fields are ``None``
only where StratoVirt's default depends on other fields (``aio``, ``queues``, ``transport``,
``mac``...); everything else holds the effective value. Paths are absolute (resolved against the
manifest's folder). Nothing here does I/O.

This module holds what every VM has (the machine-level sections come from ``model_machine``);
the device, NUMA, standard-VM and sandbox classes live in ``model_devices``, ``model_numa``,
``model_pci`` and ``model_control`` and load on first use (``launcher.model.Drive`` works all the
same): a ``svlaunch cmdline`` of a VM without them does not pay for creating their classes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from launcher.keys import (
    HOST_ONLY,
    HOT_REPLACE_DISK,
    HOT_REPLACE_NIC,
    LIST,
    LOG,
    PATH,
    REQUIRED,
    SERIAL,
    SOCKETS,
    TABLE,
    URI,
    VM_NAME,
    key,
)
from launcher.model_enums import (  # re-exported: the model's value sets are imported from here
    Aio,
    Arch,
    ChardevBackend,
    Discard,
    MachineType,
    NetType,
    NumaPolicy,
    PanicAction,
    RestartPolicy,
    Transport,
    UpdateMode,
)
from launcher.model_machine import Boot, Cpu, Machine, Memory, Numa, Topology

if TYPE_CHECKING:
    from launcher.model_control import Monitor, Ozone, Pvpanic
    from launcher.model_devices import (
        Balloon,
        Console,
        Drive,
        Net,
        Rng,
        VirtioSerial,
        Vsock,
    )
    from launcher.model_pci import Pflash, RootPort, UsbController, UsbKeyboard, UsbTablet, Vfio

#: model classes defined in the modules that load on first use
_LAZY = {
    **dict.fromkeys(
        ("PciAddress", "Drive", "Net", "VirtioSerial", "Console", "Vsock", "Balloon", "Rng"),
        "launcher.model_devices",
    ),
    **dict.fromkeys(("MemoryZone", "NumaNode", "NumaDistance"), "launcher.model_numa"),
    **dict.fromkeys(
        ("RootPort", "Pflash", "Vfio", "UsbController", "UsbKeyboard", "UsbTablet"),
        "launcher.model_pci",
    ),
    **dict.fromkeys(("Monitor", "Ozone", "Pvpanic"), "launcher.model_control"),
}

__all__ = [
    "Aio",
    "Arch",
    "Boot",
    "Chardev",
    "ChardevBackend",
    "Discard",
    "Cpu",
    "Log",
    "Machine",
    "MachineType",
    "Manifest",
    "Memory",
    "NetType",
    "Numa",
    "NumaPolicy",
    "PanicAction",
    "RestartPolicy",
    "Topology",
    "Transport",
    "UpdateMode",
    "Usb",
    *_LAZY,
]

#: docs of the tables that only group keys (``[global.pcie-root-port]``): (description, StratoVirt)
GROUP_TABLES: dict[tuple[str, ...], tuple[str, str]] = {
    ("global",): ("Global device properties.", "-global"),
    ("global", "pcie-root-port"): ("Root port defaults (standard VMs).", ""),
}


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


# -- what every VM may use: chardevs, the log, the USB container --------------------------------


@dataclass(frozen=True, slots=True)
class Chardev:
    """``-chardev`` (and the inline ``-serial`` backend)."""

    id: str = key(REQUIRED, "Chardev id.", sv=("-chardev", "id"), plan="ChardevPlan.id")
    backend: ChardevBackend = key(
        REQUIRED,
        "Where the character device goes.",
        sv="-chardev <backend>",
        plan="ChardevPlan.backend",
    )
    path: str | None = key(
        None,
        "Socket or file path (required for socket and file).",
        kind=PATH,
        io="output",
        sv=("-chardev", "path"),
        plan="ChardevPlan.path",
    )
    server: bool = key(
        False,
        "Listen on the socket instead of connecting (socket only).",
        sv=("-chardev", "server", "flag"),
        plan="ChardevPlan.server",
    )
    nowait: bool = key(
        False,
        "Do not wait for a client before starting (socket only).",
        sv=("-chardev", "nowait", "flag"),
        plan="ChardevPlan.nowait",
    )


@dataclass(frozen=True, slots=True)
class Log:
    """``-D [file]``: no file means stdout (StratoVirt's behaviour; the guidebook says stderr)."""

    file: str | None = key(
        None, "Log file (appended).", kind=PATH, io="output", sv="-D <file>", plan="Plan.log_file"
    )


@dataclass(frozen=True, slots=True)
class Usb:
    """USB controller and devices (standard VMs)."""

    xhci: UsbController | None = key(
        None, "The nec-usb-xhci controller.", sv="-device nec-usb-xhci"
    )
    keyboard: UsbKeyboard | None = key(None, "A USB keyboard.", sv="-device usb-kbd")
    tablet: UsbTablet | None = key(None, "A USB tablet.", sv="-device usb-tablet")


# -- the whole VM -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """A whole VM. ``source`` is the manifest file (for messages); ``base_dir`` resolves paths."""

    name: str = key(
        REQUIRED,
        "VM name: 1-64 characters from A-Z a-z 0-9 _ . + -, starting with a letter or digit"
        " (unique among VMs on a host).",
        kind=VM_NAME,
        sv="-name",
        plan="Plan.name",
    )
    arch: Arch = key(Arch.X86_64, "Guest and host architecture.", plan="Plan.arch")
    seccomp: bool = key(
        True,
        "Install StratoVirt's syscall filter.",
        sv="-disable-seccomp when false",
        plan="Plan.seccomp",
    )
    paused: bool = key(
        False, "Create vCPUs paused (resume with QMP cont).", sv="-S", plan="Plan.paused"
    )
    incoming: str | None = key(
        None,
        'Restore from a snapshot or migration: "file:PATH", "unix:PATH" or "tcp:IP:PORT".',
        kind=URI,
        nonempty=True,
        sv="-incoming",
        plan="Plan.incoming",
    )
    daemonize: bool = key(
        False,
        "Run StratoVirt as a daemon (no stdio devices allowed).",
        sv="-daemonize",
        plan="Plan.daemonize",
    )
    pidfile: str | None = key(
        None,
        "Where the daemon writes its pid (requires daemonize).",
        kind=PATH,
        io="output",
        sv="-pidfile",
        plan="Plan.pidfile",
    )
    trace: str | None = key(
        None,
        "File listing trace events to enable.",
        kind=PATH,
        io="input",
        sv="-trace events=",
    )
    iothreads: tuple[str, ...] = key(
        (), "Iothread ids (at most 8).", sv="-object iothread,id=", plan="Plan.iothreads"
    )
    qmp: tuple[str, ...] = key(
        (),
        "QMP unix socket path(s). Absent: svlaunch up creates one in the runtime directory;"
        " StratoVirt itself requires one.",
        kind=SOCKETS,
        sv="-qmp unix:<path>,server,nowait",
        plan="Plan.qmp",
    )
    hosts: tuple[str, ...] = key(
        (),
        "The hosts that run this VM under svlaunch apply/agent (host names, as --host gives"
        " them; default the hostname). Absent: every host that applies the source.",
        apply=HOST_ONLY,
    )
    depends_on: tuple[str, ...] = key(
        (),
        "VMs on the same host that svlaunch apply starts before this one (and stops after it).",
        apply=HOST_ONLY,
    )
    restart: RestartPolicy = key(
        RestartPolicy.ON_FAILURE,
        "What the GitOps agent does when the VM ends: always start it again, only after a"
        " failure (a crash, a signal, a guest panic), or never.",
        apply=HOST_ONLY,
    )
    update: UpdateMode = key(
        UpdateMode.LIVE_OR_RESTART,
        "How svlaunch apply carries out a changed manifest: live over QMP where the key allows"
        " it and a restart otherwise, always a restart, or manual (report only).",
        apply=HOST_ONLY,
    )
    machine: Machine = key(Machine, "Machine type and global switches.", sv="-machine")
    cpu: Cpu = key(
        Cpu,
        "vCPU count, topology and model; unset factors are derived as StratoVirt does.",
        sv="-smp, -cpu",
    )
    memory: Memory = key(Memory, "Guest RAM.", sv="-m, -mem-path, -mem-prealloc")
    numa: Numa = key(
        Numa, "Guest NUMA topology (standard VMs; StratoVirt ignores -numa on microvm)."
    )
    boot: Boot = key(Boot, "Direct kernel boot.")
    fast_unplug: bool | None = key(
        None,
        "Fast unplug (Kata).",
        sv="-global pcie-root-port.fast-unplug=0|1",
        at=("global", "pcie-root-port"),
        name="fast-unplug",
    )
    log: Log | None = key(
        None,
        "StratoVirt's log: true logs to stdout, a table with file logs to that file.",
        kind=LOG,
        item="Log file.",
        sv="-D [file]",
        plan="Plan.log",
    )
    drives: tuple[Drive, ...] = key(
        (),
        "Block devices.",
        kind=TABLE,
        item="A virtio-blk disk: the -drive backend and its device.",
        sv="-drive, -device virtio-blk-*",
        plan="Plan.devices",
        apply=HOT_REPLACE_DISK,
    )
    nets: tuple[Net, ...] = key(
        (),
        "Network devices.",
        kind=TABLE,
        item="A virtio-net NIC: the -netdev backend and its device.",
        sv="-netdev, -device virtio-net-*",
        plan="Plan.devices",
        apply=HOT_REPLACE_NIC,
    )
    chardevs: tuple[Chardev, ...] = key(
        (),
        "Character devices for consoles, monitors and vhost-user.",
        kind=TABLE,
        item="A character device.",
        sv="-chardev",
        plan="Plan.chardevs",
    )
    serial: Chardev | None = key(
        None,
        'The legacy serial port (ttyS0): "stdio", "pty", or a table with backend/path.',
        kind=SERIAL,
        item="Serial backend.",
        sv="-serial <backend>[,path=...]",
        plan="Plan.serial",
    )
    virtio_serial: VirtioSerial | None = key(
        None,
        "The virtio-serial transport for consoles (implied by consoles).",
        sv="-device virtio-serial-*",
    )
    consoles: tuple[Console, ...] = key(
        (),
        "virtio consoles (/dev/hvc*), keyed by device id.",
        kind=TABLE,
        item="A virtconsole.",
        sv="-device virtconsole",
        plan="Plan.devices",
    )
    vsock: Vsock | None = key(
        None, "The vhost-vsock device (one per VM).", sv="-device vhost-vsock-*"
    )
    balloon: Balloon | None = key(
        None,
        "The virtio-balloon device (one per VM).",
        sv="-device virtio-balloon-*",
        snapshot="StratoVirt does not snapshot a virtio-balloon",
    )
    rngs: tuple[Rng, ...] = key(
        (),
        "Entropy devices.",
        kind=TABLE,
        item="A virtio-rng device and its rng-random object.",
        sv="-object rng-random, -device virtio-rng-*",
        plan="Plan.devices",
    )
    pvpanic: Pvpanic | None = key(
        None,
        "The pvpanic device (QEMU's ISA pvpanic at I/O port 0x505, ACPI id QEMU0001): the guest"
        " reports its panics, so a panic is told apart from a reboot (docs/lifecycle.md)."
        " Builtin engine only: StratoVirt v2.2 has no pvpanic, svlaunch cmdline refuses it.",
        plan="Plan.pvpanic",
    )
    root_ports: tuple[RootPort, ...] = key(
        (),
        "PCIe root ports (standard VMs); the id names the new bus. Quote ids with dots:"
        ' [root-ports."pcie.1"].',
        kind=TABLE,
        item="A pcie-root-port.",
        sv="-device pcie-root-port",
    )
    pflash: tuple[Pflash, ...] = key(
        (),
        "Firmware flash devices (standard VMs): unit 0 code, unit 1 variables.",
        kind=LIST,
        item="A pflash drive.",
        sv="-drive if=pflash",
    )
    vfio: tuple[Vfio, ...] = key(
        (),
        "Host PCI devices passed through (standard VMs).",
        kind=TABLE,
        item="A vfio-pci device.",
        sv="-device vfio-pci",
        snapshot="StratoVirt does not snapshot VFIO devices (their state lives in the hardware)",
    )
    usb: Usb = key(Usb, "USB controller and devices (standard VMs).")
    monitors: tuple[Monitor, ...] = key(
        (),
        "QMP monitors on declared socket chardevs (server and nowait).",
        kind=LIST,
        item="A monitor.",
        sv="-mon chardev=<id>,id=<id>,mode=control",
        plan="Plan.qmp",
    )
    ozone: Ozone | None = key(
        None, "Run inside the ozone sandbox.", sv="ozone", plan="Plan.sandbox"
    )
    source: str = field(default="<memory>", compare=False)
    base_dir: str = field(default=".", compare=False)
