"""Model → StratoVirt v2.2 argv: one ``emit_<option>`` per option, in one canonical order.

Pure and deterministic: the same manifest always gives the same list, so GitOps diffs of the
argv are meaningful. The order satisfies StratoVirt's own rules (devices are realized in argv
order: root ports before their children, virtio-serial before virtconsole, xhci before USB
devices; ``-serial`` is written inline because ``-serial chardev:ID`` cannot work in v2.2).
Only non-default values are written, except keys StratoVirt requires. Values StratoVirt cannot
spell (a size that is not whole MiB, a value starting with '-') raise ``InvalidInput`` naming the
manifest key, as validation would. Paths go through a ``PathFn`` so ozone can map them into
its jail (``launcher.compile.stratovirt.ozone``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from launcher.compile.stratovirt import devices
from launcher.compile.stratovirt.common import (
    PathFn,
    PathKind,
    cannot,
    plain_path,
    props,
    size_text,
)
from launcher.compile.stratovirt.declared import emit_props
from launcher.compile.stratovirt.props import write_intlist
from launcher.compile.stratovirt.tokens import STRATOVIRT_OPTIONS, check_emitted
from launcher.errors import InvalidInput
from launcher.model import Arch, Chardev, Manifest

# -- options, in emission order ---------------------------------------------------------------


def emit_name(m: Manifest, px: PathFn) -> list[str]:
    return ["-name", m.name]


def emit_machine(m: Manifest, px: PathFn) -> list[str]:
    mc = m.machine
    if mc.usb:
        raise cannot("StratoVirt v2.2 only accepts machine usb=off", "machine.usb")
    if m.arch is not Arch.AARCH64:
        mc = replace(mc, gic_version=None)  # an aarch64 key (validation warns)
    return ["-machine", props(str(mc.type), *emit_props(mc, "-machine"))]


def emit_smp(m: Manifest, px: PathFn) -> list[str]:
    factors = emit_props(m.cpu, "-smp")
    if m.cpu.cpus == 1 and not factors:
        return []
    return ["-smp", props(str(m.cpu.cpus), *factors)]


def emit_cpu(m: Manifest, px: PathFn) -> list[str]:
    c = m.cpu
    if c.model is None and c.pmu is None:
        return []
    return ["-cpu", props(c.model, *emit_props(c, "-cpu"))]


def emit_memory(m: Manifest, px: PathFn) -> list[str]:
    mem = m.memory
    out = [] if mem.size == 256 << 20 else ["-m", size_text(mem.size, "memory.size")]
    if mem.path is not None:
        out += ["-mem-path", px(mem.path, PathKind.INPUT, "memory.path")]
    if mem.prealloc:
        out.append("-mem-prealloc")
    return out


def _zone(zid: str, size: int, host_nodes: tuple[int, ...], policy: str, key: str) -> list[str]:
    if not host_nodes:
        raise cannot(
            f"{key}: StratoVirt v2.2 requires host-nodes",
            f"{key}.host-nodes",
            "add host-nodes = [0]",
        )
    return [
        "-object",
        props(
            "memory-backend-ram",
            ("size", size_text(size, f"{key}.size")),
            ("id", zid),
            ("host-nodes", write_intlist(host_nodes)),
            ("policy", policy),
        ),
    ]


def emit_memory_objects(m: Manifest, px: PathFn) -> list[str]:
    """NUMA nodes' zones first, then node-less zones: the layout order the engine uses too."""
    out: list[str] = []
    for n in m.numa.nodes:
        out += _zone(n.memdev_id, n.size, n.host_nodes, str(n.policy), f"numa.nodes.{n.id}")
    for z in m.memory.zones:
        out += _zone(z.id, z.size, z.host_nodes, str(z.policy), f"memory.zones.{z.id}")
    return out


def emit_numa(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for n in m.numa.nodes:
        if not n.cpus:
            raise cannot(f"numa node {n.id} lists no cpus", f"numa.nodes.{n.id}.cpus")
        cpus = write_intlist(n.cpus)
        out += ["-numa", props("node", ("nodeid", n.id), ("cpus", cpus), ("memdev", n.memdev_id))]
    for d in m.numa.distances:
        out += ["-numa", props("dist", ("src", d.src), ("dst", d.dst), ("val", d.val))]  # required
    return out


def emit_boot(m: Manifest, px: PathFn) -> list[str]:
    b = m.boot
    out: list[str] = []
    if b.kernel is not None:
        out += ["-kernel", px(b.kernel, PathKind.INPUT, "boot.kernel")]
    if b.initrd is not None:
        out += ["-initrd", px(b.initrd, PathKind.INPUT, "boot.initrd")]
    if b.cmdline is not None:
        out += ["-append", b.cmdline]
    return out


def emit_iothreads(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for t in m.iothreads:
        out += ["-object", props("iothread", ("id", t or None))]
    return out


def chardev_spec(c: Chardev, px: PathFn, key: str, with_id: bool = True) -> str:
    return props(
        str(c.backend), ("id", c.id if with_id else None), *emit_props(c, "-chardev", px, key)
    )


def emit_chardevs(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for c in m.chardevs:
        out += ["-chardev", chardev_spec(c, px, f"chardevs.{c.id}")]
    return out


def emit_global(m: Manifest, px: PathFn) -> list[str]:
    if m.fast_unplug is None:
        return []
    return ["-global", f"pcie-root-port.fast-unplug={int(m.fast_unplug)}"]


def emit_serial(m: Manifest, px: PathFn) -> list[str]:
    if m.serial is None:
        return []
    return ["-serial", chardev_spec(m.serial, px, "serial", with_id=False)]


def emit_qmp(m: Manifest, px: PathFn) -> list[str]:
    if not m.qmp:
        return []
    if len(m.qmp) > 1:
        raise cannot(
            "StratoVirt v2.2 takes one -qmp socket",
            "qmp",
            "keep one qmp path; add more through a socket chardev and [[monitors]]",
        )
    path = px(m.qmp[0], PathKind.OUTPUT, "qmp")
    if ":" in path:
        raise cannot(
            f"qmp path '{m.qmp[0]}' contains ':', which -qmp unix:<path> cannot hold", "qmp"
        )
    return ["-qmp", f"unix:{path},server,nowait"]


def emit_mon(m: Manifest, px: PathFn) -> list[str]:
    if not m.monitors:
        return []
    if len(m.monitors) > 1:
        raise cannot("StratoVirt v2.2 takes one -mon", "monitors", "keep one monitor")
    mon = m.monitors[0]
    return [
        "-mon",
        props(None, ("chardev", mon.chardev), *emit_props(mon, "-mon"), ("mode", "control")),
    ]


def emit_control(m: Manifest, px: PathFn) -> list[str]:
    """Logging, daemon, trace, migration, seccomp and start-paused switches."""
    out: list[str] = []
    if m.log is not None:
        out.append("-D")
        if m.log.file is not None:
            out.append(px(m.log.file, PathKind.OUTPUT, "log.file"))
    if m.daemonize:
        out.append("-daemonize")
    if m.pidfile is not None:
        out += ["-pidfile", px(m.pidfile, PathKind.OUTPUT, "pidfile")]
    if m.trace is not None:
        out += ["-trace", "events=" + px(m.trace, PathKind.INPUT, "trace")]
    if m.incoming is not None:
        out += ["-incoming", incoming_text(m.incoming, px)]
    if not m.seccomp:
        out.append("-disable-seccomp")
    if m.paused:
        out.append("-S")
    return out


def incoming_text(uri: str, px: PathFn) -> str:
    scheme, sep, rest = uri.partition(":")
    if sep and scheme.lower() == "file":
        return f"{scheme}:{px(rest, PathKind.INPUT, 'incoming')}"
    if sep and scheme.lower() == "unix":
        return f"{scheme}:{px(rest, PathKind.OUTPUT, 'incoming')}"
    return uri


EMITTERS: tuple[Callable[[Manifest, PathFn], list[str]], ...] = (
    emit_name,
    emit_machine,
    emit_smp,
    emit_cpu,
    emit_memory,
    emit_memory_objects,
    emit_numa,
    emit_boot,
    devices.emit_pflash,
    emit_iothreads,
    devices.emit_drives,
    devices.emit_netdevs,
    emit_chardevs,
    devices.emit_rng_objects,
    devices.emit_devices,
    emit_global,
    emit_serial,
    emit_qmp,
    emit_mon,
    emit_control,
)


def emit_argv(m: Manifest, px: PathFn = plain_path) -> list[str]:
    """StratoVirt's arguments (without the program name) for a validated manifest."""
    if m.pvpanic is not None:  # validation says so first, located; never dropped silently
        from launcher.validate.devices import PVPANIC_HINT, PVPANIC_REFUSED

        raise cannot(PVPANIC_REFUSED, "pvpanic", PVPANIC_HINT)
    argv: list[str] = []
    for emit in EMITTERS:
        argv += emit(m, px)
    for i, arg in enumerate(argv):
        if arg.startswith("-") and arg not in STRATOVIRT_OPTIONS:
            raise cannot(
                f"value '{arg}' of {argv[i - 1]} starts with '-', which StratoVirt reads as an option",
                "",
                "rename it so it does not start with '-'",
            )
    try:
        check_emitted(argv, STRATOVIRT_OPTIONS)
    except InvalidInput as exc:
        issue = exc.issues[0]
        raise cannot(
            f"the command line would not parse: {issue.message}",
            "",
            "a value equals an option name",
        ) from None
    return argv
