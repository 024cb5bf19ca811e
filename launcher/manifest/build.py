"""Schema-valid plain data → ``launcher.model.Manifest``.

Runs after the JSON Schema check, so types and key names are already right; what is left is
value syntax (sizes, cpu lists, PCI addresses), defaults that depend on nothing else, and path
resolution against the manifest's folder. Every problem becomes an ``Issue`` with its key path;
the caller decides where it points in the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from launcher import model as m
from launcher.errors import Issue
from launcher.manifest.sourcemap import Path, format_path
from launcher.manifest.values import SIZE_HINT, parse_int_list, parse_pci_addr, parse_size

T = TypeVar("T")
SERIAL_ID = "serial_chardev"


def resolve_path(value: str, base_dir: str) -> str:
    """Absolute, normalised path; relative ones resolve against ``base_dir``."""
    return os.path.normpath(os.path.join(base_dir, value))


class Builder:
    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.issues: list[Issue] = []

    # -- helpers ---------------------------------------------------------------------------

    def fail(self, path: Path, message: str, code: str, hint: str = "") -> None:
        self.issues.append(Issue(message, format_path(path), hint, code=code))

    def path(self, value: str | None) -> str | None:
        return None if value is None else resolve_path(value, self.base_dir)

    def size(self, value: Any, path: Path) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(path, str(exc), "size-syntax", SIZE_HINT)
            return 0

    def ints(self, value: Any, path: Path, what: str) -> tuple[int, ...]:
        try:
            return parse_int_list(value, what)
        except ValueError as exc:
            self.fail(
                path,
                str(exc),
                "int-list-syntax",
                'write a list like [0, 1, 4] or a string like "0-1,4"',
            )
            return ()

    def pci(self, d: dict[str, Any], path: Path) -> m.PciAddress | None:
        if "addr" not in d:
            if "bus" in d or "multifunction" in d:
                key = "bus" if "bus" in d else "multifunction"
                self.fail(
                    (*path, key),
                    f"'{key}' needs 'addr' (the PCI slot)",
                    "pci-addr-required",
                    'add addr = "0x3" (a free slot on the bus)',
                )
            return None
        try:
            slot, func = parse_pci_addr(d["addr"])
        except ValueError as exc:
            self.fail(
                (*path, "addr"),
                str(exc),
                "pci-addr-syntax",
                'write "SLOT" or "SLOT.FUNCTION", e.g. "0x3" or "0x3.0x1"',
            )
            return None
        return m.PciAddress(d.get("bus", "pcie.0"), slot, func, d.get("multifunction"))

    @staticmethod
    def transport(d: dict[str, Any]) -> m.Transport | None:
        t = d.get("transport")
        return m.Transport(t) if t else None

    def table(
        self, data: dict[str, Any], key: str, make: Callable[[str, dict[str, Any], Path], T]
    ) -> tuple[T, ...]:
        return tuple(make(i, v, (key, i)) for i, v in (data.get(key) or {}).items())

    # -- sections --------------------------------------------------------------------------

    def build(self, d: dict[str, Any], source: str) -> m.Manifest:
        qmp = d.get("qmp", ())
        qmp = (qmp,) if isinstance(qmp, str) else tuple(qmp)
        serial = d.get("serial")
        glob = d.get("global", {}).get("pcie-root-port", {})
        log = d.get("log")
        if log is True:
            log_v: m.Log | None = m.Log()
        elif isinstance(log, dict):
            log_v = m.Log(self.path(log.get("file")))
        else:
            log_v = None
        incoming = d.get("incoming")
        if incoming:
            scheme, sep, rest = incoming.partition(":")
            if sep and scheme.lower() in ("file", "unix") and rest:
                incoming = f"{scheme}:{resolve_path(rest, self.base_dir)}"
        return m.Manifest(
            name=d["name"],
            arch=m.Arch(d.get("arch", "x86_64")),
            machine=self.machine(d.get("machine", {})),
            cpu=m.Cpu(**{k: v for k, v in d.get("cpu", {}).items()}),
            memory=self.memory(d.get("memory", {})),
            numa=self.numa(d.get("numa", {})),
            boot=self.boot(d.get("boot", {})),
            fast_unplug=glob.get("fast-unplug"),
            log=log_v,
            daemonize=d.get("daemonize", False),
            pidfile=self.path(d.get("pidfile")),
            iothreads=tuple(d.get("iothreads", ())),
            drives=self.table(d, "drives", self.drive),
            nets=self.table(d, "nets", self.net),
            chardevs=self.table(d, "chardevs", self.chardev),
            serial=self.serial(serial) if serial is not None else None,
            virtio_serial=self.virtio_serial(d["virtio-serial"]) if "virtio-serial" in d else None,
            consoles=tuple(m.Console(i, c["chardev"]) for i, c in d.get("consoles", {}).items()),
            vsock=self.vsock(d["vsock"]) if "vsock" in d else None,
            balloon=self.balloon(d["balloon"]) if "balloon" in d else None,
            rngs=self.table(d, "rngs", self.rng),
            root_ports=self.table(d, "root-ports", self.root_port),
            pflash=tuple(
                m.Pflash(
                    p["unit"],
                    self.path(p["file"]) or "",
                    p.get("readonly", False),
                    p.get("format", "raw"),
                )
                for p in d.get("pflash", ())
            ),
            vfio=self.table(d, "vfio", self.vfio),
            usb=self.usb(d.get("usb", {})),
            trace=self.path(d.get("trace")),
            seccomp=d.get("seccomp", True),
            paused=d.get("paused", False),
            incoming=incoming,
            qmp=tuple(resolve_path(q, self.base_dir) if q else q for q in qmp),
            monitors=tuple(m.Monitor(x["chardev"], x.get("id")) for x in d.get("monitors", ())),
            ozone=self.ozone(d["ozone"]) if "ozone" in d else None,
            source=source,
            base_dir=self.base_dir,
        )

    def machine(self, d: dict[str, Any]) -> m.Machine:
        return m.Machine(
            type=m.MachineType(d.get("type", "microvm")),
            dump_guest_core=d.get("dump-guest-core", True),
            mem_share=d.get("mem-share", False),
            accel=d.get("accel"),
            usb=d.get("usb"),
            gic_version=d.get("gic-version"),
        )

    def memory(self, d: dict[str, Any]) -> m.Memory:
        zones = tuple(
            m.MemoryZone(
                z["id"],
                self.size(z["size"], ("memory", "zones", i, "size")),
                self.ints(
                    z.get("host-nodes", [0]), ("memory", "zones", i, "host-nodes"), "host node list"
                ),
                m.NumaPolicy(z.get("policy", "default")),
            )
            for i, z in enumerate(d.get("zones", ()))
        )
        return m.Memory(
            size=self.size(d["size"], ("memory", "size")) if "size" in d else 256 << 20,
            path=self.path(d.get("path")),
            prealloc=d.get("prealloc", False),
            zones=zones,
        )

    def numa(self, d: dict[str, Any]) -> m.Numa:
        nodes = []
        for i, n in enumerate(d.get("nodes", ())):
            p: Path = ("numa", "nodes", i)
            nodes.append(
                m.NumaNode(
                    id=n["id"],
                    cpus=self.ints(n["cpus"], (*p, "cpus"), "cpu list"),
                    size=self.size(n["size"], (*p, "size")),
                    host_nodes=self.ints(
                        n.get("host-nodes", [0]), (*p, "host-nodes"), "host node list"
                    ),
                    policy=m.NumaPolicy(n.get("policy", "default")),
                    memdev=n.get("memdev"),
                )
            )
        dists = tuple(m.NumaDistance(x["src"], x["dst"], x["val"]) for x in d.get("distances", ()))
        return m.Numa(tuple(nodes), dists)

    def boot(self, d: dict[str, Any]) -> m.Boot:
        cmdline = d.get("cmdline")
        if isinstance(cmdline, list):
            cmdline = " ".join(cmdline)
        return m.Boot(self.path(d.get("kernel")), self.path(d.get("initrd")), cmdline)

    def drive(self, id_: str, d: dict[str, Any], p: Path) -> m.Drive:
        return m.Drive(
            id=id_,
            file=self.path(d["file"]) or "",
            readonly=d.get("readonly", False),
            direct=d.get("direct", True),
            aio=m.Aio(d["aio"]) if "aio" in d else None,
            format=d.get("format", "raw"),
            iops=d.get("iops"),
            attached=d.get("attached", True),
            device_id=d.get("device-id"),
            serial=d.get("serial"),
            iothread=d.get("iothread"),
            num_queues=d.get("queues"),
            queue_size=d.get("queue-size", 256),
            bootindex=d.get("bootindex"),
            transport=self.transport(d),
            pci=self.pci(d, p),
        )

    def net(self, id_: str, d: dict[str, Any], p: Path) -> m.Net:
        return m.Net(
            id=id_,
            type=m.NetType(d.get("type", "tap")),
            ifname=d.get("ifname"),
            fds=tuple(d.get("fds", ())),
            vhost=d.get("vhost"),
            vhostfds=tuple(d.get("vhostfds", ())),
            queues=d.get("queues"),
            chardev=d.get("chardev"),
            attached=d.get("attached", True),
            device_id=d.get("device-id"),
            mac=d.get("mac"),
            mq=d.get("mq", False),
            iothread=d.get("iothread"),
            queue_size=d.get("queue-size", 256),
            transport=self.transport(d),
            pci=self.pci(d, p),
        )

    def chardev(self, id_: str, d: dict[str, Any], p: Path = ()) -> m.Chardev:
        return m.Chardev(
            id_,
            m.ChardevBackend(d["backend"]),
            self.path(d.get("path")),
            d.get("server", False),
            d.get("nowait", False),
        )

    def serial(self, v: str | dict[str, Any]) -> m.Chardev:
        if isinstance(v, str):
            return m.Chardev(SERIAL_ID, m.ChardevBackend(v))
        return self.chardev(SERIAL_ID, v)

    def virtio_serial(self, d: dict[str, Any]) -> m.VirtioSerial:
        return m.VirtioSerial(d.get("id"), self.transport(d), self.pci(d, ("virtio-serial",)))

    def vsock(self, d: dict[str, Any]) -> m.Vsock:
        return m.Vsock(
            d.get("id", "vsock0"),
            d["guest-cid"],
            d.get("vhostfd"),
            self.transport(d),
            self.pci(d, ("vsock",)),
        )

    def balloon(self, d: dict[str, Any]) -> m.Balloon:
        return m.Balloon(
            d.get("id"),
            d.get("deflate-on-oom", False),
            d.get("free-page-reporting", False),
            self.transport(d),
            self.pci(d, ("balloon",)),
        )

    def rng(self, id_: str, d: dict[str, Any], p: Path) -> m.Rng:
        return m.Rng(
            id_,
            self.path(d.get("file", "/dev/urandom")) or "",
            d.get("max-bytes"),
            d.get("period"),
            d.get("device-id"),
            self.transport(d),
            self.pci(d, p),
        )

    def _required_pci(self, d: dict[str, Any], p: Path) -> m.PciAddress:
        return self.pci(d, p) or m.PciAddress(d.get("bus", "pcie.0"), 0)

    def root_port(self, id_: str, d: dict[str, Any], p: Path) -> m.RootPort:
        return m.RootPort(id_, d["port"], self._required_pci(d, p), d.get("chassis"))

    def vfio(self, id_: str, d: dict[str, Any], p: Path) -> m.Vfio:
        return m.Vfio(id_, self._required_pci(d, p), d.get("host"), self.path(d.get("sysfsdev")))

    def usb(self, d: dict[str, Any]) -> m.Usb:
        x = d.get("xhci")
        xhci = None
        if x is not None:
            xhci = m.UsbController(
                x.get("id", "xhci"),
                self._required_pci(x, ("usb", "xhci")),
                x.get("p2"),
                x.get("p3"),
            )
        kbd = d.get("keyboard")
        tab = d.get("tablet")
        return m.Usb(
            xhci,
            m.UsbDevice(kbd.get("id", "kbd")) if kbd is not None else None,
            m.UsbDevice(tab.get("id", "tablet")) if tab is not None else None,
        )

    def ozone(self, d: dict[str, Any]) -> m.Ozone:
        caps = d.get("capabilities")
        return m.Ozone(
            exec_file=self.path(d["exec-file"]) or "",
            uid=d["uid"],
            gid=d["gid"],
            name=d.get("name"),
            capabilities=tuple(caps) if caps is not None else None,
            netns=self.path(d.get("netns")),
            sources=tuple(self.path(s) or "" for s in d.get("sources", ())),
            numa=d.get("numa"),
            cgroup=tuple(d.get("cgroup", {}).items()),
            clean_resource=d.get("clean-resource", False),
            root=self.path(d.get("root", "/srv/ozone")) or "/srv/ozone",
        )


def build_manifest(
    data: dict[str, Any], source: str, base_dir: str
) -> tuple[m.Manifest, list[Issue]]:
    """The model for schema-valid ``data`` plus the value-syntax issues found on the way."""
    b = Builder(base_dir)
    manifest = b.build(data, source)
    return manifest, b.issues
