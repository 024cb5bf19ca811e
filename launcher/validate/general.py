"""Rules on strings and control options: lengths, commas, leading dashes, QMP, daemonize.

StratoVirt splits every property list on commas with no escaping and rejects any argv element
that starts with '-' as an unknown option; both are easy to trip over from a manifest where
values look free-form, so they are checked for every value that ends up on the command line.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.names import VM_NAME_HINT, is_vm_name
from launcher import model as m
from launcher.manifest.sourcemap import Path
from launcher.validate.base import Context

MAX_ID = 255
MAX_PATH = 4096
MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1


def _len(ctx: Context, path: Path, value: str, limit: int, what: str) -> None:
    n = len(value.encode())
    if n > limit:
        ctx.add(
            "string-too-long",
            path,
            f"{what} is {n} bytes long; the limit is {limit}",
            f"shorten the {what}",
        )


def _no_comma(ctx: Context, path: Path, value: str, what: str) -> None:
    if "," in value:
        ctx.add(
            "comma-in-value",
            path,
            f"{what} {value!r} contains ','; StratoVirt splits option values on every comma",
            f"rename the {what} without commas",
        )


def _no_dash(ctx: Context, path: Path, value: str, what: str) -> None:
    if value.startswith("-"):
        ctx.add(
            "leading-dash",
            path,
            f"{what} {value!r} starts with '-'; StratoVirt would read it as an option",
            f"rename it or use a path like ./{value}",
        )


def _socket(ctx: Context, path: Path, value: str, what: str) -> None:
    n = len(value.encode())
    if n > MAX_SOCKET_PATH:
        ctx.add(
            "socket-path",
            path,
            f"{what} path is {n} bytes; unix sockets allow at most {MAX_SOCKET_PATH}",
            "use a shorter path (e.g. under /run)",
        )
    if ":" in value:
        ctx.add(
            "socket-path",
            path,
            f"{what} path {value!r} contains ':', which StratoVirt's unix:PATH parser rejects",
            "choose a path without ':'",
        )


def ids(man: m.Manifest) -> list[tuple[Path, str, str]]:
    """(path, id, what) for every id that StratoVirt receives."""
    out: list[tuple[Path, str, str]] = [
        (("iothreads", i), t, "iothread id") for i, t in enumerate(man.iothreads)
    ]
    for key, items in (
        ("drives", man.drives),
        ("nets", man.nets),
        ("chardevs", man.chardevs),
        ("consoles", man.consoles),
        ("rngs", man.rngs),
        ("root-ports", man.root_ports),
        ("vfio", man.vfio),
    ):
        for it in items:
            out.append(((key, it.id), it.id, f"{key[:-1] if key != 'vfio' else key} id"))
            dev = getattr(it, "device_id", None)
            if dev:
                out.append(((key, it.id, "device-id"), dev, "device id"))
    for i, z in enumerate(man.memory.zones):
        out.append((("memory", "zones", i, "id"), z.id, "memory zone id"))
    for i, n in enumerate(man.numa.nodes):
        if n.memdev:
            out.append((("numa", "nodes", i, "memdev"), n.memdev, "memdev id"))
    for key, obj in (
        ("vsock", man.vsock),
        ("balloon", man.balloon),
        ("virtio-serial", man.virtio_serial),
    ):
        if obj is not None and obj.id:
            out.append(((key, "id"), obj.id, f"{key} id"))
    for key, usb_dev in (
        ("xhci", man.usb.xhci),
        ("keyboard", man.usb.keyboard),
        ("tablet", man.usb.tablet),
    ):
        if usb_dev is not None:
            out.append((("usb", key, "id"), usb_dev.id, "usb id"))
    for i, mon in enumerate(man.monitors):
        if mon.id:
            out.append((("monitors", i, "id"), mon.id, "monitor id"))
    return out


def prop_values(man: m.Manifest) -> list[tuple[Path, str, str]]:
    """(path, value, what) for values placed inside a comma-separated property list."""
    out: list[tuple[Path, str, str]] = []
    for d in man.drives:
        out.append((("drives", d.id, "file"), d.file, "drive file path"))
        if d.serial:
            out.append((("drives", d.id, "serial"), d.serial, "serial"))
    for i, p in enumerate(man.pflash):
        out.append((("pflash", i, "file"), p.file, "pflash file path"))
    for n in man.nets:
        if n.ifname:
            out.append((("nets", n.id, "ifname"), n.ifname, "tap name"))
    for c in man.chardevs:
        if c.path:
            out.append((("chardevs", c.id, "path"), c.path, "chardev path"))
    if man.serial and man.serial.path:
        out.append((("serial", "path"), man.serial.path, "serial path"))
    for r in man.rngs:
        out.append((("rngs", r.id, "file"), r.file, "rng file path"))
    if man.trace:
        out.append((("trace",), man.trace, "trace file path"))
    for i, q in enumerate(man.qmp):
        out.append((("qmp", i) if len(man.qmp) > 1 else ("qmp",), q, "qmp path"))
    if man.cpu.model:
        out.append((("cpu", "model"), man.cpu.model, "cpu model"))
    for v in man.vfio:
        if v.host:
            out.append((("vfio", v.id, "host"), v.host, "host address"))
        if v.sysfsdev:
            out.append((("vfio", v.id, "sysfsdev"), v.sysfsdev, "sysfsdev path"))
    if man.machine.accel:
        out.append((("machine", "accel"), man.machine.accel, "accel"))
    return out


def check(ctx: Context) -> None:
    man = ctx.manifest
    if not is_vm_name(man.name):  # a manifest's shape check catches it first; import does not
        ctx.add("vm-name", ("name",), f"{man.name!r} is not a valid VM name", VM_NAME_HINT)
    for path, value, what in ids(man):
        _len(ctx, path, value, MAX_ID, what)
        _no_comma(ctx, path, value, what)
    for path, value, what in prop_values(man):
        _no_comma(ctx, path, value, what)
        if "path" in what:
            _len(ctx, path, value, MAX_PATH, what)
    for path, maybe, what in (
        (("boot", "kernel"), man.boot.kernel, "kernel path"),
        (("memory", "path"), man.memory.path, "memory path"),
        (("pidfile",), man.pidfile, "pidfile path"),
        (("log", "file"), man.log.file if man.log else None, "log file path"),
        (("incoming",), man.incoming, "incoming uri"),
        (("boot", "cmdline"), man.boot.cmdline, "kernel command line"),
        (("cpu", "model"), man.cpu.model, "cpu model"),
    ):
        if maybe:
            _no_dash(ctx, path, maybe, what)
            if what.endswith("path"):
                _len(ctx, path, maybe, MAX_PATH, what)
    for i, q in enumerate(man.qmp):
        _socket(ctx, ("qmp", i) if len(man.qmp) > 1 else ("qmp",), q, "qmp socket")
    for c in man.chardevs:
        if c.backend is m.ChardevBackend.SOCKET and c.path:
            _socket(ctx, ("chardevs", c.id, "path"), c.path, "chardev socket")
    _control(ctx)
    _iothreads(ctx)


def _control(ctx: Context) -> None:
    man = ctx.manifest
    if not man.qmp and not man.monitors:
        msg = "no QMP socket: StratoVirt requires -qmp or -mon"
        if ctx.target == "stratovirt":
            ctx.add("qmp-missing", ("qmp",), msg, 'add qmp = "/run/<name>.qmp"')
        else:
            ctx.warn(
                "qmp-missing",
                ("qmp",),
                msg + "; svlaunch up will create one in its runtime directory",
                'add qmp = "/run/<name>.qmp" to choose the path',
            )
    if man.pidfile and not man.daemonize:
        ctx.add(
            "pidfile-needs-daemonize",
            ("pidfile",),
            "pidfile is only written by a daemonized StratoVirt",
            "set daemonize = true or remove pidfile",
        )
    stdio: list[Path] = []
    if man.serial and man.serial.backend is m.ChardevBackend.STDIO:
        stdio.append(("serial",))
    stdio += [
        ("chardevs", c.id, "backend") for c in man.chardevs if c.backend is m.ChardevBackend.STDIO
    ]
    if len(stdio) > 1:
        ctx.add(
            "stdio-multiple",
            stdio[1],
            f"{len(stdio)} devices use stdio; at most one may",
            "use pty or a socket for the others",
        )
    if man.daemonize and stdio:
        ctx.add(
            "daemonize-stdio",
            stdio[0],
            "a stdio device cannot be used with daemonize (the daemon has no terminal)",
            "use pty, a socket or a file, or drop daemonize",
        )
    if man.log and man.log.file is None and man.daemonize:
        ctx.add(
            "daemonize-stdio",
            ("log",),
            "logging to stdout is lost when daemonized",
            'set log.file = "/var/log/<name>.log"',
            "warning",
        )
    if man.incoming:
        _incoming(ctx, man.incoming)


def _incoming(ctx: Context, uri: str) -> None:
    parts = uri.split(":")
    scheme = parts[0].lower()
    hint = 'write "file:/path/to/template", "unix:/path" or "tcp:192.0.2.1:4444"'
    if scheme in ("file", "unix") and len(parts) == 2 and parts[1]:
        return
    if scheme == "tcp" and len(parts) == 3:
        import ipaddress  # rare: not worth its import on every start-up

        try:
            ipaddress.IPv4Address(parts[1])
            if parts[2].isdigit() and int(parts[2]) <= 65535:
                return
        except ValueError:
            pass
    ctx.add("incoming-uri", ("incoming",), f"invalid incoming uri {uri!r}", hint)


def _iothreads(ctx: Context) -> None:
    man = ctx.manifest
    if len(man.iothreads) > 8:
        ctx.add(
            "iothread-limit",
            ("iothreads",),
            f"{len(man.iothreads)} iothreads; StratoVirt allows at most 8",
            "share iothreads between devices",
        )
    seen: set[str] = set()
    for i, t in enumerate(man.iothreads):
        if t in seen:
            ctx.add(
                "iothread-duplicate",
                ("iothreads", i),
                f"iothread {t!r} is declared twice",
                "remove the second entry",
            )
        seen.add(t)
    used: set[str] = set()
    for key, items in (("drives", man.drives), ("nets", man.nets)):
        for it in items:
            if it.iothread is None:
                continue
            used.add(it.iothread)
            if it.iothread not in seen:
                ctx.add(
                    "iothread-unknown",
                    (key, it.id, "iothread"),
                    f"iothread {it.iothread!r} is not declared",
                    _did_you_mean(it.iothread, man.iothreads, "add it to iothreads"),
                )
    for i, t in enumerate(man.iothreads):
        if t not in used:
            ctx.warn(
                "iothread-unused",
                ("iothreads", i),
                f"iothread {t!r} is used by no device",
                "remove it or set iothread on a drive or net",
            )


def _did_you_mean(value: str, options: Iterable[str], fallback: str) -> str:
    import difflib

    close = difflib.get_close_matches(value, list(options), n=1)
    return f"did you mean {close[0]!r}?" if close else fallback
