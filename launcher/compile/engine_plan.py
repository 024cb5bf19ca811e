"""Manifest → engine plan: where everything sits in the guest, for the builtin engine.

Pure: a validated ``Manifest`` in, a frozen ``Plan`` out. It decides the guest memory map (RAM
ranges around the 32-bit MMIO hole, NUMA node ranges, host bindings), the vCPUs and their APIC
ids, and the virtio-mmio slot, window and IRQ of every device. Things the engine does not run
(PCI, VFIO, USB, pflash, vhost-user, q35/virt, aarch64, ``incoming``) are reported all at once as
``engine-unsupported`` issues rather than dropped: they stay valid for ``svlaunch cmdline``.
"""

from __future__ import annotations

import hashlib

from launcher.compile import layout
from launcher.compile.plan import (
    BalloonPlan,
    BlkPlan,
    BootPlan,
    ChardevPlan,
    ConsolePlan,
    DevicePlan,
    HostBinding,
    HostFile,
    MemoryPlan,
    NetPlan,
    NumaNodePlan,
    NumaPlan,
    Plan,
    RamRange,
    RngPlan,
    SandboxPlan,
    SerialPlan,
    SlotPlan,
    TopologyPlan,
    VcpuPlan,
    VsockPlan,
)
from launcher.compile.topology import TopologyError, cpu_positions, resolve_topology
from launcher.errors import InvalidInput, Issue
from launcher.model import (
    Arch,
    Chardev,
    ChardevBackend,
    MachineType,
    Manifest,
    NetType,
    Transport,
)

#: StratoVirt microvm pre-creates 4 block and 2 net transports ("replaceable slots") for hot-replace.
MICROVM_BLK_SLOTS = 4
MICROVM_NET_SLOTS = 2

DEFAULT_DISTANCE_LOCAL = 10
DEFAULT_DISTANCE_REMOTE = 20


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
    if m.incoming:
        issues.append(_unsupported("incoming", "restoring a snapshot ('incoming')"))
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


def _chardev_plan(c: Chardev) -> ChardevPlan:
    return ChardevPlan(c.id, str(c.backend), c.path, c.server, c.nowait)


def default_mac(vm_name: str, net_id: str) -> str:
    """A stable locally administered MAC (52:54:00 prefix, as QEMU) derived from the VM and net ids."""
    digest = hashlib.sha256(f"{vm_name}/{net_id}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _memory_plan(m: Manifest) -> tuple[MemoryPlan, NumaPlan | None, dict[int, int]]:
    """RAM ranges, NUMA node ranges and host bindings. Zones are laid out back to back."""
    size = m.memory.size
    ranges: list[RamRange] = []
    bindings: list[HostBinding] = []
    nodes: list[NumaNodePlan] = []
    # Zones in declaration order: NUMA nodes first (their memdevs), then node-less zones.
    zones: list[tuple[int | None, int, tuple[int, ...], str]] = [
        (n.id, n.size, n.host_nodes, str(n.policy)) for n in m.numa.nodes
    ] + [(None, z.size, z.host_nodes, str(z.policy)) for z in m.memory.zones]
    offset = 0
    for node_id, zsize, host_nodes, policy in zones:
        pieces = layout.guest_ranges(offset, zsize)
        for addr, length in pieces:
            ranges.append(RamRange(addr, length, node_id))
            bindings.append(HostBinding(addr, length, host_nodes, policy))
        if node_id is not None:
            nodes.append(NumaNodePlan(node_id, (), zsize, tuple(pieces), host_nodes, policy))
        offset += zsize
    if offset < size:
        ranges.extend(RamRange(a, s) for a, s in layout.guest_ranges(offset, size - offset))
    memory = MemoryPlan(
        size=size,
        ranges=tuple(ranges),
        mmio_hole=(layout.MMIO32_START, layout.MMIO32_SIZE),
        mem_path=m.memory.path,
        prealloc=m.memory.prealloc,
        shared=m.machine.mem_share,
        dump_guest_core=m.machine.dump_guest_core,
        bindings=tuple(bindings),
    )
    if not m.numa.nodes:
        return memory, None, {}
    cpu_node: dict[int, int] = {}
    for n in m.numa.nodes:
        for c in n.cpus:
            cpu_node[c] = n.id
    for c in range(m.cpu.cpus):  # StratoVirt: uncovered vCPUs join node 0 when it exists
        if c not in cpu_node and any(n.id == 0 for n in m.numa.nodes):
            cpu_node[c] = 0
    nodes = [
        NumaNodePlan(
            n.id,
            tuple(sorted(c for c, nid in cpu_node.items() if nid == n.id)),
            n.size,
            n.ranges,
            n.host_nodes,
            n.policy,
        )
        for n in nodes
    ]
    ids = sorted(n.id for n in nodes)
    given = {(d.src, d.dst): d.val for d in m.numa.distances}
    matrix = tuple(
        tuple(
            given.get(
                (a, b),
                given.get((b, a), DEFAULT_DISTANCE_LOCAL if a == b else DEFAULT_DISTANCE_REMOTE),
            )
            for b in ids
        )
        for a in ids
    )
    return memory, NumaPlan(tuple(sorted(nodes, key=lambda n: n.id)), matrix), cpu_node


def _devices(m: Manifest) -> list[DevicePlan]:
    """virtio-mmio devices in slot order: 4 block and 2 net replaceable slots first, as StratoVirt."""
    chardevs = {c.id: c for c in m.chardevs}
    specs: list[DevicePlan] = []
    slot = 0

    def place() -> tuple[int, int]:
        nonlocal slot
        base, irq = layout.virtio_mmio_slot(slot)
        slot += 1
        return base, irq

    drives = [d for d in m.drives if d.attached]
    for i in range(max(MICROVM_BLK_SLOTS, len(drives))):
        base, irq = place()
        if i < len(drives):
            d = drives[i]
            specs.append(
                BlkPlan(
                    id=d.device_name,
                    mmio_base=base,
                    irq=irq,
                    iothread=d.iothread,
                    file=d.file,
                    readonly=d.readonly,
                    direct=d.direct,
                    aio=str(d.aio) if d.aio else ("native" if d.direct else "off"),
                    serial=d.serial,
                    iops=d.iops,
                    num_queues=d.num_queues or 1,
                    queue_size=d.queue_size,
                    drive_id=d.id,
                )
            )
        else:
            specs.append(SlotPlan(id=f"blk-slot{i}", mmio_base=base, irq=irq, accepts="blk"))
    nets = [n for n in m.nets if n.attached]
    plain = [n for n in nets if not n.vhost]
    vhost = [n for n in nets if n.vhost]
    for i in range(max(MICROVM_NET_SLOTS, len(plain))):
        base, irq = place()
        if i < len(plain):
            specs.append(_net_plan(m, plain[i], base, irq))
        else:
            specs.append(SlotPlan(id=f"net-slot{i}", mmio_base=base, irq=irq, accepts="net"))
    for n in vhost:
        base, irq = place()
        specs.append(_net_plan(m, n, base, irq))
    for c in m.consoles:
        base, irq = place()
        chardev = chardevs.get(c.chardev)
        specs.append(
            ConsolePlan(
                id=c.id,
                mmio_base=base,
                irq=irq,
                chardev=_chardev_plan(chardev) if chardev else None,
            )
        )
    for r in m.rngs:
        base, irq = place()
        specs.append(
            RngPlan(
                id=r.device_id or r.id,
                mmio_base=base,
                irq=irq,
                file=r.file,
                max_bytes=r.max_bytes,
                period_ms=r.period,
            )
        )
    if m.balloon:
        base, irq = place()
        b = m.balloon
        specs.append(
            BalloonPlan(
                id=b.id or "balloon0",
                mmio_base=base,
                irq=irq,
                deflate_on_oom=b.deflate_on_oom,
                free_page_reporting=b.free_page_reporting,
            )
        )
    if m.vsock:
        base, irq = place()
        v = m.vsock
        specs.append(
            VsockPlan(id=v.id, mmio_base=base, irq=irq, guest_cid=v.guest_cid, vhostfd=v.vhostfd)
        )
    return specs


def _mmio_slot_count(m: Manifest) -> int:
    """How many virtio-mmio windows ``_devices`` will place (the same counting rules)."""
    drives = sum(1 for d in m.drives if d.attached)
    nets = [n for n in m.nets if n.attached]
    plain = sum(1 for n in nets if not n.vhost)
    return (
        max(MICROVM_BLK_SLOTS, drives)
        + max(MICROVM_NET_SLOTS, plain)
        + (len(nets) - plain)
        + len(m.consoles)
        + len(m.rngs)
        + (m.balloon is not None)
        + (m.vsock is not None)
    )


def _net_plan(m: Manifest, n, base: int, irq: int) -> NetPlan:
    pairs = max(n.queues or 1, len(n.fds), len(n.vhostfds))
    return NetPlan(
        id=n.device_name,
        mmio_base=base,
        irq=irq,
        iothread=n.iothread,
        ifname=n.ifname,
        fds=n.fds,
        mac=n.mac or default_mac(m.name, n.id),
        queue_pairs=pairs,
        mq=n.mq,
        vhost=bool(n.vhost),
        vhostfds=n.vhostfds,
        queue_size=n.queue_size,
        netdev_id=n.id,
    )


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
    wanted = _mmio_slot_count(m)
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
    memory, numa, cpu_node = _memory_plan(m)
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
        o = m.ozone
        sandbox = SandboxPlan(
            name=o.name or m.name,
            exec_file=o.exec_file,
            uid=o.uid,
            gid=o.gid,
            root=o.root,
            capabilities=o.capabilities,
            netns=o.netns,
            sources=o.sources,
            numa=o.numa,
            cgroup=o.cgroup,
            clean_resource=o.clean_resource,
        )
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
        serial=SerialPlan(_chardev_plan(m.serial), layout.SERIAL_PORT, layout.SERIAL_IRQ)
        if m.serial
        else None,
        chardevs=tuple(_chardev_plan(c) for c in m.chardevs),
        devices=tuple(_devices(m)),
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
        host_files=tuple(_host_files(m)),
    )
