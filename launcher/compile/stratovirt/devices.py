"""Model → argv for backends and devices: ``-drive``, ``-netdev``, ``-object rng-random``, ``-device``.

Device names follow the transport (``virtio-blk-device`` on virtio-mmio, ``virtio-blk-pci`` on PCI;
default: mmio on microvm, pci on q35/virt). ``-device`` options come out in dependency order, as
StratoVirt realizes them in argv order: root ports (parents first), then disks, NICs,
virtio-serial before its consoles, vsock, balloon, rng, VFIO, and the xhci controller before the
USB keyboard and tablet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.compile.stratovirt.common import PathFn, PathKind, cannot, opt_bool, props
from launcher.compile.stratovirt.declared import emit_props
from launcher.model import Transport

if TYPE_CHECKING:
    from collections.abc import Sequence

    from launcher.model import Drive, Manifest, Net, PciAddress, RootPort


def transport(m: Manifest, t: Transport | None) -> Transport:
    if t is not None:
        return t
    return Transport.PCI if m.machine.type.is_standard else Transport.MMIO


def dev_name(base: str, t: Transport) -> str:
    return f"{base}-pci" if t is Transport.PCI else f"{base}-device"


def placement(t: Transport, pci: PciAddress | None, key: str) -> list[tuple[str, object]]:
    """``bus``/``addr``/``multifunction``: required on PCI, impossible on virtio-mmio."""
    if t is Transport.MMIO:
        if pci is not None:
            raise cannot(
                f"{key}: virtio mmio device does not support bus arguments",
                f"{key}.bus",
                "drop bus/addr or use transport = 'pci' on a q35 machine",
            )
        return []
    if pci is None:
        raise cannot(
            f"{key}: a PCI device needs bus and addr",
            f"{key}.bus",
            'add bus = "pcie.0" and addr = "0x3"',
        )
    return [("bus", pci.bus), ("addr", pci.addr), ("multifunction", opt_bool(pci.multifunction))]


# -- backends ----------------------------------------------------------------------------------


def emit_pflash(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for p in m.pflash:
        key = f"pflash.{p.unit}"
        out += [
            "-drive",
            props(
                None,
                ("file", px(p.file, PathKind.INPUT, f"{key}.file")),
                ("if", "pflash"),
                ("unit", p.unit),
                *emit_props(p, "-drive if=pflash"),
            ),
        ]
    return out


def emit_drives(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for d in m.drives:
        key = f"drives.{d.id}"
        out += [
            "-drive",
            props(
                None,
                ("id", d.id),
                ("file", px(d.file, PathKind.INPUT, f"{key}.file")),
                *emit_props(d, "-drive", px, key),
            ),
        ]
    return out


def emit_netdevs(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for n in m.nets:
        out += [
            "-netdev",
            props(str(n.type), ("id", n.id), *emit_props(n, "-netdev", px, f"nets.{n.id}")),
        ]
    return out


def emit_rng_objects(m: Manifest, px: PathFn) -> list[str]:
    out: list[str] = []
    for r in m.rngs:
        path = px(
            r.file,
            PathKind.KEEP if r.file.startswith("/dev/") else PathKind.INPUT,
            f"rngs.{r.id}.file",
        )
        out += ["-object", props("rng-random", ("id", r.id), ("filename", path))]
    return out


# -- devices -----------------------------------------------------------------------------------


def root_port_order(ports: tuple[RootPort, ...]) -> list[RootPort]:
    """Declaration order, except that a port on another port's bus comes after that port."""
    done: list[RootPort] = []
    pending = list(ports)
    while pending:
        ids = {p.id for p in pending}
        ready = [p for p in pending if p.pci.bus not in ids or p.pci.bus == p.id]
        if not ready:  # a cycle: validation reports it; keep declaration order
            ready = pending
        done += ready
        pending = [p for p in pending if p not in ready]
    return done


def emit_root_ports(m: Manifest) -> list[str]:
    out: list[str] = []
    for rp in root_port_order(m.root_ports):
        out += [
            "-device",
            props(
                "pcie-root-port",
                ("id", rp.id),
                ("port", f"{rp.port:#x}"),
                *placement(Transport.PCI, rp.pci, f"root-ports.{rp.id}"),
                *emit_props(rp, "pcie-root-port"),
            ),
        ]
    return out


def emit_blk_devices(m: Manifest) -> list[str]:
    return _backed_devices(m, m.drives, "virtio-blk", "drive", "drives")


def emit_net_devices(m: Manifest) -> list[str]:
    return _backed_devices(m, m.nets, "virtio-net", "netdev", "nets")


def _backed_devices(
    m: Manifest, items: Sequence[Drive | Net], base: str, backend: str, section: str
) -> list[str]:
    """The ``-device`` of each attached drive or NIC, naming its backend (``drive=``/``netdev=``)."""
    out: list[str] = []
    for it in items:
        if not it.attached:
            continue
        t = transport(m, it.transport)
        out += [
            "-device",
            props(
                dev_name(base, t),
                ("id", it.device_name),
                (backend, it.id),
                *placement(t, it.pci, f"{section}.{it.id}"),
                *emit_props(it, base),
            ),
        ]
    return out


def emit_serial_devices(m: Manifest) -> list[str]:
    vs = m.virtio_serial
    if vs is None and not m.consoles:
        return []
    t = transport(m, vs.transport if vs else None)
    out = [
        "-device",
        props(
            dev_name("virtio-serial", t),
            ("id", vs.id if vs else None),
            *placement(t, vs.pci if vs else None, "virtio-serial"),
        ),
    ]
    for c in m.consoles:
        out += [
            "-device",
            props("virtconsole", ("id", c.id), ("chardev", c.chardev)),
        ]  # both required
    return out


def emit_misc_virtio(m: Manifest) -> list[str]:
    """vsock, balloon and rng devices."""
    out: list[str] = []
    if (v := m.vsock) is not None:
        t = transport(m, v.transport)
        out += [
            "-device",
            props(
                dev_name("vhost-vsock", t),
                ("id", v.id),
                ("guest-cid", v.guest_cid),
                *placement(t, v.pci, "vsock"),
                *emit_props(v, "vhost-vsock"),
            ),
        ]
    if (b := m.balloon) is not None:
        t = transport(m, b.transport)
        out += [
            "-device",
            props(
                dev_name("virtio-balloon", t),
                ("id", b.id),
                *placement(t, b.pci, "balloon"),
                *emit_props(b, "virtio-balloon"),
            ),
        ]
    for r in m.rngs:
        t = transport(m, r.transport)
        out += [
            "-device",
            props(
                dev_name("virtio-rng", t),
                ("id", r.device_id or r.id),
                ("rng", r.id),
                *placement(t, r.pci, f"rngs.{r.id}"),
                *emit_props(r, "virtio-rng"),
            ),
        ]
    return out


def emit_passthrough(m: Manifest, px: PathFn) -> list[str]:
    """VFIO functions and the USB controller with its keyboard and tablet."""
    out: list[str] = []
    for v in m.vfio:
        out += [
            "-device",
            props(
                "vfio-pci",
                ("id", v.id),
                *emit_props(v, "vfio-pci", px, f"vfio.{v.id}"),
                *placement(Transport.PCI, v.pci, f"vfio.{v.id}"),
            ),
        ]
    if (x := m.usb.xhci) is not None:
        if x.pci.multifunction is not None:
            raise cannot("nec-usb-xhci has no multifunction key", "usb.xhci.multifunction")
        out += [
            "-device",
            props(
                "nec-usb-xhci",
                ("id", x.id),
                ("bus", x.pci.bus),
                ("addr", x.pci.addr),
                *emit_props(x, "nec-usb-xhci"),
            ),
        ]
    if m.usb.keyboard is not None:
        out += ["-device", props("usb-kbd", ("id", m.usb.keyboard.id))]
    if m.usb.tablet is not None:
        out += ["-device", props("usb-tablet", ("id", m.usb.tablet.id))]
    return out


def emit_devices(m: Manifest, px: PathFn) -> list[str]:
    return (
        emit_root_ports(m)
        + emit_blk_devices(m)
        + emit_net_devices(m)
        + emit_serial_devices(m)
        + emit_misc_virtio(m)
        + emit_passthrough(m, px)
    )
