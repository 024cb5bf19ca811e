"""Every device the manifest creates, in StratoVirt's ``-device`` order, as uniform records.

Rules about ids, transports, PCI placement and microvm slot/IRQ budgets look at devices of all
kinds alike; this module gives them one list instead of eleven special cases.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher import model as m
from launcher.manifest.sourcemap import Path


@dataclass(frozen=True, slots=True)
class Device:
    """One device the manifest creates, whatever its kind."""

    kind: str  # "blk", "net", "rng", "vsock", "balloon", "virtio-serial", "console", ...
    path: Path  # manifest key path of the entry
    id: str | None
    virtio: bool  # has an mmio/pci transport choice
    transport: m.Transport | None  # explicit transport (None: the machine's default)
    pci: m.PciAddress | None
    pci_only: bool = False  # root ports, vfio, xhci: always PCI
    vhost_net: bool = False  # a vhost-kernel net: no replaceable slot, but an IRQ


def devices(man: m.Manifest) -> list[Device]:
    """Devices in the order the compiler emits them (root ports first)."""
    out: list[Device] = []
    for rp in man.root_ports:
        out.append(Device("root-port", ("root-ports", rp.id), rp.id, False, None, rp.pci, True))
    vs = man.virtio_serial
    if vs is not None or man.consoles:
        vs = vs or m.VirtioSerial()
        out.append(Device("virtio-serial", ("virtio-serial",), vs.id, True, vs.transport, vs.pci))
    for c in man.consoles:
        out.append(Device("console", ("consoles", c.id), c.id, False, None, None))
    for d in man.drives:
        if d.attached:
            out.append(Device("blk", ("drives", d.id), d.device_name, True, d.transport, d.pci))
    for n in man.nets:
        if n.attached:
            out.append(
                Device(
                    "net",
                    ("nets", n.id),
                    n.device_name,
                    True,
                    n.transport,
                    n.pci,
                    vhost_net=bool(n.vhost) and n.type is m.NetType.TAP,
                )
            )
    if man.vsock is not None:
        v = man.vsock
        out.append(Device("vsock", ("vsock",), v.id, True, v.transport, v.pci))
    if man.balloon is not None:
        b = man.balloon
        out.append(Device("balloon", ("balloon",), b.id, True, b.transport, b.pci))
    for r in man.rngs:
        out.append(Device("rng", ("rngs", r.id), r.device_id or r.id, True, r.transport, r.pci))
    for f in man.vfio:
        out.append(Device("vfio", ("vfio", f.id), f.id, False, None, f.pci, True))
    if man.usb.xhci is not None:
        x = man.usb.xhci
        out.append(Device("xhci", ("usb", "xhci"), x.id, False, None, x.pci, True))
    if man.usb.keyboard is not None:
        out.append(Device("usb-kbd", ("usb", "keyboard"), man.usb.keyboard.id, False, None, None))
    if man.usb.tablet is not None:
        out.append(Device("usb-tablet", ("usb", "tablet"), man.usb.tablet.id, False, None, None))
    return out
