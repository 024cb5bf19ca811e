"""``Manifest`` → minimal plain data → TOML or YAML text (the inverse of loading).

Used by ``svlaunch import``: the output omits every value equal to its default, keeps the
schema's key order, writes sizes as ``"512M"``, cpu lists as ``"0-3"``, and paths relative to
``base_dir`` when they share more than the root with it (``../build/vmlinux`` yes,
``/dev/urandom`` no). Loading the dump gives back an equal ``Manifest``.
"""

from __future__ import annotations

import os
from typing import Any

from launcher import model as m
from launcher.manifest.build import SERIAL_ID
from launcher.manifest.values import format_int_list, format_size

D = dict[str, Any]


def _rel(path: str | None, base: str) -> str | None:
    if path is None:
        return None
    if not os.path.isabs(path) or not os.path.isabs(base):
        return path
    try:
        common = os.path.commonpath([path, base])
    except ValueError:
        return path
    if len([p for p in common.split(os.sep) if p]) < 2:
        return path
    return os.path.relpath(path, base)


def _put(d: D, key: str, value: Any, default: Any = None) -> None:
    if value is None or value == default:
        return
    if isinstance(value, (tuple, list, dict)) and not value and default is None:
        return
    d[key] = value


def _pci(d: D, transport: m.Transport | None, pci: m.PciAddress | None) -> D:
    if transport is not None:
        d["transport"] = transport.value
    if pci is not None:
        if pci.bus != "pcie.0":
            d["bus"] = pci.bus
        d["addr"] = pci.addr
        if pci.multifunction is not None:
            d["multifunction"] = pci.multifunction
    return d


class _Dumper:
    def __init__(self, base: str) -> None:
        self.base = base

    def p(self, path: str | None) -> str | None:
        return _rel(path, self.base)

    def data(self, man: m.Manifest) -> D:
        d: D = {"name": man.name}
        _put(d, "arch", man.arch.value, "x86_64")
        _put(d, "seccomp", man.seccomp, True)
        _put(d, "paused", man.paused, False)
        if man.incoming:
            scheme, _, rest = man.incoming.partition(":")
            if scheme.lower() in ("file", "unix") and rest:
                d["incoming"] = f"{scheme}:{self.p(rest)}"
            else:
                d["incoming"] = man.incoming
        _put(d, "daemonize", man.daemonize, False)
        _put(d, "pidfile", self.p(man.pidfile))
        _put(d, "trace", self.p(man.trace))
        _put(d, "iothreads", list(man.iothreads))
        qmp = [self.p(q) for q in man.qmp]
        if qmp:
            d["qmp"] = qmp[0] if len(qmp) == 1 else qmp
        self.sections(d, man)
        return d

    def sections(self, d: D, man: m.Manifest) -> None:
        mc = man.machine
        machine: D = {}
        _put(machine, "type", mc.type.value, "microvm")
        _put(machine, "dump-guest-core", mc.dump_guest_core, True)
        _put(machine, "mem-share", mc.mem_share, False)
        _put(machine, "accel", mc.accel)
        _put(machine, "usb", mc.usb)
        _put(machine, "gic-version", mc.gic_version)
        _put(d, "machine", machine)
        cpu: D = {}
        _put(cpu, "cpus", man.cpu.cpus, 1)
        for k in ("maxcpus", "sockets", "dies", "clusters", "cores", "threads", "model", "pmu"):
            _put(cpu, k, getattr(man.cpu, k))
        _put(d, "cpu", cpu)
        mem: D = {}
        _put(mem, "size", format_size(man.memory.size), format_size(256 << 20))
        _put(mem, "path", self.p(man.memory.path))
        _put(mem, "prealloc", man.memory.prealloc, False)
        _put(
            mem,
            "zones",
            [self.zone(z.id, z.size, z.host_nodes, z.policy) for z in man.memory.zones],
        )
        _put(d, "memory", mem)
        numa: D = {}
        nodes = []
        for n in man.numa.nodes:
            nd = {"id": n.id, "cpus": format_int_list(n.cpus)}
            nd.update(self.zone(None, n.size, n.host_nodes, n.policy))
            _put(nd, "memdev", n.memdev)
            nodes.append(nd)
        _put(numa, "nodes", nodes)
        _put(
            numa,
            "distances",
            [{"src": x.src, "dst": x.dst, "val": x.val} for x in man.numa.distances],
        )
        _put(d, "numa", numa)
        boot: D = {}
        _put(boot, "kernel", self.p(man.boot.kernel))
        _put(boot, "initrd", self.p(man.boot.initrd))
        _put(boot, "cmdline", man.boot.cmdline)
        _put(d, "boot", boot)
        if man.fast_unplug is not None:
            d["global"] = {"pcie-root-port": {"fast-unplug": man.fast_unplug}}
        if man.log is not None:
            d["log"] = {"file": self.p(man.log.file)} if man.log.file else True
        _put(d, "drives", {x.id: self.drive(x) for x in man.drives})
        _put(d, "nets", {x.id: self.net(x) for x in man.nets})
        _put(d, "chardevs", {c.id: self.chardev(c) for c in man.chardevs})
        if man.serial is not None:
            s = self.chardev(man.serial)
            d["serial"] = s["backend"] if list(s) == ["backend"] else s
        if man.virtio_serial is not None:
            vs: D = {}
            _put(vs, "id", man.virtio_serial.id)
            d["virtio-serial"] = _pci(vs, man.virtio_serial.transport, man.virtio_serial.pci)
        _put(d, "consoles", {c.id: {"chardev": c.chardev} for c in man.consoles})
        if man.vsock is not None:
            v = man.vsock
            vd: D = {}
            _put(vd, "id", v.id, "vsock0")
            vd["guest-cid"] = v.guest_cid
            _put(vd, "vhostfd", v.vhostfd)
            d["vsock"] = _pci(vd, v.transport, v.pci)
        if man.balloon is not None:
            b = man.balloon
            bd: D = {}
            _put(bd, "id", b.id)
            _put(bd, "deflate-on-oom", b.deflate_on_oom, False)
            _put(bd, "free-page-reporting", b.free_page_reporting, False)
            d["balloon"] = _pci(bd, b.transport, b.pci)
        _put(d, "rngs", {r.id: self.rng(r) for r in man.rngs})
        _put(d, "root-ports", {r.id: self.root_port(r) for r in man.root_ports})
        _put(d, "pflash", [self.pflash(p) for p in man.pflash])
        _put(d, "vfio", {v.id: self.vfio(v) for v in man.vfio})
        usb = self.usb(man.usb)
        _put(d, "usb", usb)
        _put(
            d,
            "monitors",
            [{"chardev": x.chardev, **({"id": x.id} if x.id else {})} for x in man.monitors],
        )
        if man.ozone is not None:
            d["ozone"] = self.ozone(man.ozone, man.name)

    @staticmethod
    def zone(ident: str | None, size: int, host_nodes: tuple[int, ...], policy: m.NumaPolicy) -> D:
        z: D = {} if ident is None else {"id": ident}
        z["size"] = format_size(size)
        if host_nodes != (0,):
            z["host-nodes"] = list(host_nodes)
        _put(z, "policy", policy.value, "default")
        return z

    def drive(self, x: m.Drive) -> D:
        d: D = {"file": self.p(x.file)}
        _put(d, "readonly", x.readonly, False)
        _put(d, "direct", x.direct, True)
        _put(d, "aio", x.aio.value if x.aio else None)
        _put(d, "format", x.format, "raw")
        _put(d, "iops", x.iops)
        _put(d, "serial", x.serial)
        _put(d, "iothread", x.iothread)
        _put(d, "queues", x.num_queues)
        _put(d, "queue-size", x.queue_size, 256)
        _put(d, "bootindex", x.bootindex)
        _put(d, "attached", x.attached, True)
        _put(d, "device-id", x.device_id)
        return _pci(d, x.transport, x.pci)

    def net(self, x: m.Net) -> D:
        d: D = {}
        _put(d, "type", x.type.value, "tap")
        _put(d, "ifname", x.ifname)
        _put(d, "fds", list(x.fds))
        _put(d, "vhost", x.vhost)
        _put(d, "vhostfds", list(x.vhostfds))
        _put(d, "queues", x.queues)
        _put(d, "chardev", x.chardev)
        _put(d, "attached", x.attached, True)
        _put(d, "device-id", x.device_id)
        _put(d, "mac", x.mac)
        _put(d, "mq", x.mq, False)
        _put(d, "iothread", x.iothread)
        _put(d, "queue-size", x.queue_size, 256)
        return _pci(d, x.transport, x.pci)

    def chardev(self, c: m.Chardev) -> D:
        d: D = {"backend": c.backend.value}
        _put(d, "path", self.p(c.path))
        _put(d, "server", c.server, False)
        _put(d, "nowait", c.nowait, False)
        return d

    def rng(self, r: m.Rng) -> D:
        d: D = {}
        _put(d, "file", self.p(r.file), "/dev/urandom")
        _put(d, "max-bytes", r.max_bytes)
        _put(d, "period", r.period)
        _put(d, "device-id", r.device_id)
        return _pci(d, r.transport, r.pci)

    def root_port(self, r: m.RootPort) -> D:
        d: D = {"port": r.port}
        _put(d, "chassis", r.chassis)
        return _pci(d, None, r.pci)

    def pflash(self, p: m.Pflash) -> D:
        d: D = {"unit": p.unit, "file": self.p(p.file)}
        _put(d, "readonly", p.readonly, False)
        _put(d, "format", p.format, "raw")
        return d

    def vfio(self, v: m.Vfio) -> D:
        d: D = {}
        _put(d, "host", v.host)
        _put(d, "sysfsdev", self.p(v.sysfsdev))
        return _pci(d, None, v.pci)

    def usb(self, u: m.Usb) -> D:
        d: D = {}
        if u.xhci is not None:
            x: D = {}
            _put(x, "id", u.xhci.id, "xhci")
            _put(x, "p2", u.xhci.p2)
            _put(x, "p3", u.xhci.p3)
            d["xhci"] = _pci(x, None, u.xhci.pci)
        for key, dev, default in (("keyboard", u.keyboard, "kbd"), ("tablet", u.tablet, "tablet")):
            if dev is not None:
                d[key] = {} if dev.id == default else {"id": dev.id}
        return d

    def ozone(self, o: m.Ozone, vm_name: str) -> D:
        d: D = {"exec-file": self.p(o.exec_file), "uid": o.uid, "gid": o.gid}
        _put(d, "name", o.name)
        if o.capabilities is not None:
            d["capabilities"] = list(o.capabilities)
        _put(d, "netns", self.p(o.netns))
        _put(d, "sources", [self.p(s) for s in o.sources])
        _put(d, "numa", o.numa)
        _put(d, "cgroup", dict(o.cgroup))
        _put(d, "clean-resource", o.clean_resource, False)
        _put(d, "root", self.p(o.root), "/srv/ozone")
        return d


def manifest_to_data(manifest: m.Manifest, base_dir: str | None = None) -> D:
    """Minimal plain data for ``manifest`` (defaults omitted, schema key order)."""
    base = os.path.abspath(base_dir if base_dir is not None else manifest.base_dir)
    return _Dumper(base).data(manifest)


def dump_manifest(manifest: m.Manifest, fmt: str = "toml", base_dir: str | None = None) -> str:
    """The manifest as TOML or YAML text that loads back to an equal ``Manifest``."""
    data = manifest_to_data(manifest, base_dir)
    if fmt == "toml":
        from launcher.manifest.tomlw import dumps

        return dumps(data)
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(
            data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
        )
    raise ValueError(f"unknown manifest format {fmt!r}")


assert SERIAL_ID  # the serial chardev id is implied by the [serial] table
