"""Manifest → engine plan: where everything sits in the guest, for the builtin engine.

Pure: a validated ``Manifest`` in, a frozen ``Plan`` out. It decides the guest memory map (RAM
ranges around the 32-bit MMIO hole, NUMA node ranges, host bindings: ``engine_memory``), the
vCPUs and their APIC ids, and the virtio-mmio slot, window and IRQ of every device
(``engine_devices``). Things the engine does not run
(PCI, VFIO, USB, pflash, vhost-user, q35/virt, aarch64, live migration) are reported all at once as
``engine-unsupported`` issues rather than dropped: they stay valid for ``svlaunch cmdline``.
"""

from __future__ import annotations

from engine.machine import layout
from engine.plan import (
    BootPlan,
    HostFile,
    Plan,
    PvpanicPlan,
    SandboxPlan,
    SerialPlan,
    TopologyPlan,
    VcpuPlan,
)
from launcher.compile.engine_devices import (
    MICROVM_BLK_SLOTS,
    MICROVM_NET_SLOTS,
    chardev_plan,
    default_mac,
    device_plans,
    mmio_slot_count,
    planned,
)
from launcher.compile.engine_memory import (
    DEFAULT_DISTANCE_LOCAL,
    DEFAULT_DISTANCE_REMOTE,
    memory_plan,
)
from launcher.compile.topology import TopologyError, cpu_positions, resolve_topology
from launcher.errors import InvalidInput, Issue
from launcher.model import (
    Arch,
    ChardevBackend,
    MachineType,
    Manifest,
    NetType,
    Transport,
)

__all__ = [
    "DEFAULT_DISTANCE_LOCAL",
    "DEFAULT_DISTANCE_REMOTE",
    "MICROVM_BLK_SLOTS",
    "MICROVM_NET_SLOTS",
    "compile_plan",
    "default_mac",
    "unsupported_features",
]


def _unsupported(path: str, what: str, hint: str = "") -> Issue:
    return Issue(
        f"{what} is not run by the builtin engine (it stays valid for 'svlaunch cmdline')",
        path=path,
        hint=hint or "remove it to run this VM with 'svlaunch up', or run it with StratoVirt",
        code="engine-unsupported",
    )


def unsupported_features(m: Manifest) -> list[Issue]:
    """Everything in ``m`` that the builtin engine cannot run, each with its key path."""
    issues: list[Issue] = []
    if m.arch is not Arch.X86_64:
        issues.append(_unsupported("arch", f"arch '{m.arch}'", "the engine runs x86_64 guests"))
    if m.machine.type is not MachineType.MICROVM:
        issues.append(
            _unsupported("machine.type", f"machine type '{m.machine.type}'", "use type = 'microvm'")
        )
    if m.incoming and not m.incoming.lower().startswith("file:"):
        issues.append(
            _unsupported(
                "incoming",
                "live migration (incoming unix: or tcp:)",
                'the engine restores snapshots: incoming = "file:/path/to/snapshot"',
            )
        )
    if m.cpu.maxcpus is not None and m.cpu.maxcpus > m.cpu.cpus:
        issues.append(
            _unsupported(
                "cpu.maxcpus",
                f"vCPU hot-plug (maxcpus {m.cpu.maxcpus} > cpus {m.cpu.cpus})",
                f"the engine runs the {m.cpu.cpus} online vCPU(s) and cannot add more: drop "
                "maxcpus, or set it to cpus",
            )
        )
    for d in m.drives:
        if d.transport is Transport.PCI:
            issues.append(_unsupported(f"drives.{d.id}.transport", "virtio-blk-pci"))
    for n in m.nets:
        if n.transport is Transport.PCI:
            issues.append(_unsupported(f"nets.{n.id}.transport", "virtio-net-pci"))
        if n.type is NetType.VHOST_USER and n.vhost is not True:
            issues.append(_unsupported(f"nets.{n.id}.type", "a vhost-user netdev"))
    for r in m.rngs:
        if r.transport is Transport.PCI:
            issues.append(_unsupported(f"rngs.{r.id}.transport", "virtio-rng-pci"))
    if m.balloon and m.balloon.transport is Transport.PCI:
        issues.append(_unsupported("balloon.transport", "virtio-balloon-pci"))
    if m.vsock and m.vsock.transport is Transport.PCI:
        issues.append(_unsupported("vsock.transport", "vhost-vsock-pci"))
    if m.virtio_serial and m.virtio_serial.transport is Transport.PCI:
        issues.append(_unsupported("virtio-serial.transport", "virtio-serial-pci"))
    for rp in m.root_ports:
        issues.append(_unsupported(f"root-ports.{rp.id}", "a pcie-root-port"))
    for i, _ in enumerate(m.pflash):
        issues.append(_unsupported(f"pflash[{i}]", "pflash firmware"))
    for v in m.vfio:
        issues.append(_unsupported(f"vfio.{v.id}", "VFIO passthrough"))
    for key in ("xhci", "keyboard", "tablet"):
        if getattr(m.usb, key) is not None:
            issues.append(_unsupported(f"usb.{key}", f"USB {key}"))
    if m.boot.kernel is None:
        issues.append(
            Issue(
                "the builtin engine boots a kernel directly: boot.kernel is required",
                path="boot.kernel",
                hint="add [boot] kernel = 'path/to/vmlinux'",
                code="engine-kernel-required",
            )
        )
    return issues


def _host_files(m: Manifest) -> list[HostFile]:
    files: list[HostFile] = []

    def add(path: str | None, role: str, writable: bool = False) -> None:
        if path:
            files.append(HostFile(path, role, writable))

    add(m.source if m.source != "<memory>" else None, "manifest")
    add(m.boot.kernel, "kernel")
    add(m.boot.initrd, "initrd")
    for d in m.drives:
        add(d.file, "drive", not d.readonly)
    add(m.memory.path, "mem-path", True)
    for c in [*m.chardevs, *([m.serial] if m.serial else [])]:
        if c.backend in (ChardevBackend.SOCKET, ChardevBackend.FILE):
            add(c.path, "chardev", True)
    for r in m.rngs:
        add(r.file, "rng")
    add(m.trace, "trace")
    for q in m.qmp:
        add(q, "qmp", True)
    add(m.pidfile, "pidfile", True)
    if m.incoming and m.incoming.lower().startswith("file:"):
        add(m.incoming.partition(":")[2], "snapshot")
    if m.log:
        add(m.log.file, "log", True)
    return files


def compile_plan(m: Manifest) -> Plan:
    """The engine plan of a validated manifest; raises ``InvalidInput`` for what the engine can't run."""
    issues = unsupported_features(m)
    try:
        topo = resolve_topology(m.cpu)
    except TopologyError as exc:
        issues.append(Issue(str(exc), path=f"cpu.{exc.field}", hint=exc.hint, code="smp-topology"))
    if issues:
        raise InvalidInput(issues, "the builtin engine cannot run this manifest")
    wanted = mmio_slot_count(m)
    if wanted > layout.MAX_MMIO_DEVICES:
        raise InvalidInput(
            [
                Issue(
                    f"this VM needs {wanted} virtio-mmio devices (including the 4 block and 2 net "
                    f"replaceable slots); the engine has {layout.MAX_MMIO_DEVICES} interrupt lines",
                    path="",
                    hint="remove consoles, rng or net devices, or merge disks",
                    code="engine-too-many-devices",
                )
            ]
        )
    memory, numa, cpu_node = memory_plan(m)
    vcpus = tuple(
        VcpuPlan(
            p.index, p.apic_id, p.package, p.die, p.cluster, p.core, p.thread, cpu_node.get(p.index)
        )
        for p in cpu_positions(topo)
    )
    chardevs = {c.id: c for c in m.chardevs}
    qmp = list(m.qmp)
    for mon in m.monitors:
        c = chardevs.get(mon.chardev)
        if c and c.path:
            qmp.append(c.path)
    sandbox = None
    if m.ozone:
        sandbox = planned(m.ozone, SandboxPlan, name=m.ozone.name or m.name)
    return Plan(
        name=m.name,
        arch=str(m.arch),
        machine=str(m.machine.type),
        topology=TopologyPlan(
            topo.sockets,
            topo.dies,
            topo.clusters,
            topo.cores,
            topo.threads,
            topo.cpus,
            topo.maxcpus,
        ),
        vcpus=vcpus,
        memory=memory,
        boot=BootPlan(
            kernel=m.boot.kernel or "", initrd=m.boot.initrd, cmdline=m.boot.cmdline or ""
        ),
        numa=numa,
        serial=SerialPlan(chardev_plan(m.serial), layout.SERIAL_PORT, layout.SERIAL_IRQ)
        if m.serial
        else None,
        chardevs=tuple(chardev_plan(c) for c in m.chardevs),
        devices=tuple(device_plans(m)),
        iothreads=m.iothreads,
        qmp=tuple(qmp),
        paused=m.paused,
        incoming=m.incoming,
        seccomp=m.seccomp,
        daemonize=m.daemonize,
        pidfile=m.pidfile,
        log=m.log is not None,
        log_file=m.log.file if m.log else None,
        sandbox=sandbox,
        pvpanic=planned(m.pvpanic, PvpanicPlan) if m.pvpanic else None,
        host_files=tuple(_host_files(m)),
    )
