"""argv → model for ``-device``: one ``parse_<device>`` per StratoVirt v2.2 device type.

Devices are read in argv order because StratoVirt realizes them in that order: a device may only
use a bus, a virtio-serial or an xhci controller declared earlier. The type word is read
leniently (a ``-device`` without it is silently dropped by StratoVirt: we warn), then the value
is parsed strictly with the keys that type accepts. Transport follows the device name; the
machine decides which family is allowed, so imported models never need an explicit transport.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.device_rules import is_mac, serial_problem
from launcher import model as m
from launcher.compile.stratovirt.declared import prop_names, read_props
from launcher.compile.stratovirt.import_state import State
from launcher.compile.stratovirt.props import (
    Props,
    fail,
    lenient_first,
    parse_props,
    read_hexdec,
    read_pci_addr,
    suggest,
)
from launcher.compile.stratovirt.tokens import Value
from launcher.model_devices import GUEST_CID

PCI_KEYS = {"bus", "addr", "multifunction"}
UNSUPPORTED = ("virtio-scsi-pci", "scsi-hd", "scsi-cd", "vhost-user-blk-pci", "vhost-user-fs-device",
               "vhost-user-fs-pci", "virtio-gpu-pci")  # fmt: skip


def pci_of(p: Props, st: State, pci: bool) -> m.PciAddress | None:
    """``bus``/``addr``/``multifunction``: required on PCI devices, rejected on virtio-mmio ones."""
    if not pci:
        for key in PCI_KEYS:
            if p.has(key):
                raise p.error(
                    "virtio mmio device does not support bus arguments", key, f"drop '{key}'"
                )
        return None
    bus = p.raw("bus")
    if bus is None:
        raise p.error("Bus not specified for pci device", "", "add bus=pcie.0")
    if p.raw("addr") is None:
        raise p.error("No addr found for pci device", "", "add addr=0x3 (SLOT or SLOT.FUNC)")
    slot, func = p.need("addr", read_pci_addr)
    if bus not in st.buses:
        raise p.error(
            f"Parent bus :{bus} not found",
            "bus",
            "use pcie.0 or the id of a pcie-root-port declared earlier in argv",
        )
    return m.PciAddress(bus, slot, func, p.bool("multifunction"))


def _take(p: Props, pool: dict, key: str, message: str, hint: str) -> str:
    ident = p.require(key)
    entry = pool.get(ident)
    if entry is None or entry.used_by is not None:
        raise p.error(message.format(ident), key, hint)
    entry.used_by = p.index
    return ident


def parse_blk(p: Props, st: State, pci: bool) -> None:
    dev_id = p.require("id")
    drive = _take(p, st.drives, "drive", "No drive configured matched for blk device {}",
                  "declare -drive id=...,file=... once for each disk")  # fmt: skip
    fields = read_props(p, m.Drive, "virtio-blk")
    if (problem := serial_problem(fields["serial"])) is not None:
        raise p.error(problem.message, "serial", problem.hint)
    st.drives[drive].fields.update(
        attached=True,
        device_id=None if dev_id == drive else dev_id,
        pci=pci_of(p, st, pci),
        **fields,
    )
    st.at(f"drives.{drive}.device", p.index)


def parse_net(p: Props, st: State, pci: bool) -> None:
    netdev = _take(p, st.netdevs, "netdev", "Netdev {} not found or is in use",
                   "declare -netdev tap,id=... once for each NIC")  # fmt: skip
    mac = p.raw("mac")
    if mac is not None and not is_mac(mac):
        raise p.error("Mac address is illegal", "mac", "write six hex pairs: 52:54:00:12:34:56")
    if p.has("vectors"):
        st.warn("virtio-net 'vectors' is accepted and ignored by StratoVirt: dropped", p.index)
    dev_id = p.raw("id")
    st.netdevs[netdev].fields.update(
        attached=True,
        device_id=None if dev_id in (None, netdev) else dev_id,
        pci=pci_of(p, st, pci),
        **read_props(p, m.Net, "virtio-net"),
    )
    st.at(f"nets.{netdev}.device", p.index)


def parse_virtio_serial(p: Props, st: State, pci: bool) -> None:
    if st.virtio_serial is not None:
        raise p.error("Only one virtio serial device is supported", "", "drop the second one")
    st.virtio_serial = dict(id=p.raw("id"), pci=pci_of(p, st, pci))
    st.at("virtio-serial", p.index)


def parse_virtconsole(p: Props, st: State, pci: bool) -> None:
    ident = p.require("id")
    if st.virtio_serial is None:
        raise p.error(
            "No virtio-serial-bus specified",
            "",
            "declare -device virtio-serial-... before the virtconsole",
        )
    chardev = _take(p, st.chardevs, "chardev", "Chardev {} not found or is in use",
                    "declare -chardev ...,id=... once for each console")  # fmt: skip
    st.consoles.append(dict(id=ident, chardev=chardev))
    st.at(f"consoles.{ident}", p.index)


def parse_vsock(p: Props, st: State, pci: bool) -> None:
    if st.vsock is not None:
        raise p.error("only one vsock device per VM is supported", "", "drop the second one")
    p.require("guest-cid")
    cid = p.uint("guest-cid", 64, GUEST_CID.low, GUEST_CID.high)
    fields = read_props(p, m.Vsock, "vhost-vsock")
    st.vsock = dict(id=p.require("id"), guest_cid=cid, pci=pci_of(p, st, pci), **fields)
    st.at("vsock", p.index)


def parse_balloon(p: Props, st: State, pci: bool) -> None:
    if st.balloon is not None:
        raise p.error(
            "Only one balloon device is supported for each vm.", "", "drop the second one"
        )
    fields = read_props(p, m.Balloon, "virtio-balloon")
    st.balloon = dict(id=p.raw("id"), pci=pci_of(p, st, pci), **fields)
    st.at("balloon", p.index)


def parse_rng(p: Props, st: State, pci: bool) -> None:
    rng = _take(p, st.rng_objects, "rng", "Object for rng-random device not found: {}",
                "declare -object rng-random,id=...,filename=/dev/urandom")  # fmt: skip
    fields = read_props(p, m.Rng, "virtio-rng")
    max_bytes, period = fields["max_bytes"], fields["period"]
    if (max_bytes is None) != (period is None):
        missing = "period" if period is None else "max-bytes"
        raise p.error(f"Argument '{missing}' is missing", "", "give max-bytes and period together")
    if period == 0:
        raise p.error("period must be > 0", "period")
    if max_bytes is not None and period is not None:
        rate = max_bytes * 1000 // period
        if not 64 <= rate <= 1_000_000_000:
            raise p.error(
                f"rng rate max-bytes*1000/period = {rate} bytes/s must be within [64, 1000000000]",
                "max-bytes",
            )
    dev_id = p.raw("id")
    rng_fields = st.rng_objects[rng].fields
    rng_fields.update(fields, pci=pci_of(p, st, pci),
                      device_id=None if dev_id in (None, rng) else dev_id)  # fmt: skip
    st.rngs.append(rng_fields)
    st.at(f"rngs.{rng}.device", p.index)


def parse_root_port(p: Props, st: State, pci: bool) -> None:
    ident = p.require("id")
    port = p.need("port", read_hexdec)
    if port > 0xFF:
        st.warn(f"root port {port:#x} is stored as 8 bits ({port & 0xFF:#x})", p.index)
    place = pci_of(p, st, True)
    if ident in st.buses:
        raise p.error(f"Device id {ident} existed", "id", "give each root port its own id")
    fields = read_props(p, m.RootPort, "pcie-root-port")
    st.root_ports.append(dict(id=ident, port=port & 0xFF, pci=place, **fields))
    st.buses.add(ident)
    st.at(f"root-ports.{ident}", p.index)


def parse_vfio(p: Props, st: State, pci: bool) -> None:
    fields = read_props(p, m.Vfio, "vfio-pci", lambda text, kind: st.path(text, kind, p.index))
    if (fields["host"] is None) == (fields["sysfsdev"] is None):
        raise p.error("vfio-pci needs exactly one of host or sysfsdev", "", "add host=0000:1a:00.3")
    ident = p.require("id")
    st.vfio.append(dict(id=ident, pci=pci_of(p, st, True), **fields))
    st.at(f"vfio.{ident}", p.index)


def parse_xhci(p: Props, st: State, pci: bool) -> None:
    if "xhci" in st.usb:
        raise p.error(
            "svlaunch manifests hold one USB controller", "", "drop the second nec-usb-xhci"
        )
    ports = {k: p.uint(k, 8, 1) for k in ("p2", "p3")}  # read here: StratoVirt clamps, not refuses
    for key, n in ports.items():
        if n is not None and n > 15:
            st.warn(f"{key}={n} is clamped to 15 by StratoVirt", p.index)
    st.usb["xhci"] = dict(id=p.require("id"), pci=pci_of(p, st, True), **ports)
    st.at("usb.xhci", p.index)


def parse_usb_input(p: Props, st: State, pci: bool) -> None:
    key = "keyboard" if p.what == "usb-kbd" else "tablet"
    ident = p.require("id")
    if "xhci" not in st.usb:
        raise p.error(
            "Can not find parent device from pci bus",
            "",
            "declare -device nec-usb-xhci,... before it",
        )
    if key in st.usb:
        raise p.error(f"svlaunch manifests hold one USB {key}", "", f"drop the second {p.what}")
    for extra in ("bus", "port"):
        if p.has(extra):
            st.warn(f"{p.what} '{extra}' is accepted and ignored by StratoVirt: dropped", p.index)
    st.usb[key] = dict(id=ident)
    st.at(f"usb.{key}", p.index)


_BLK = {"id", "drive"} | prop_names(m.Drive, "virtio-blk")
_NET = {"id", "netdev", "vectors"} | prop_names(m.Net, "virtio-net")
_VSOCK = {"id", "guest-cid"} | prop_names(m.Vsock, "vhost-vsock")
_BALLOON = {"id"} | prop_names(m.Balloon, "virtio-balloon")
_RNG = {"id", "rng"} | prop_names(m.Rng, "virtio-rng")
Parser = Callable[[Props, State, bool], None]
# type -> (parser, keys besides bus/addr/multifunction, pci?)
DEVICES: dict[str, tuple[Parser, set[str], bool]] = {
    "virtio-blk-device": (parse_blk, _BLK, False),
    "virtio-blk-pci": (parse_blk, _BLK, True),
    "virtio-net-device": (parse_net, _NET, False),
    "virtio-net-pci": (parse_net, _NET, True),
    "virtio-serial-device": (parse_virtio_serial, {"id"}, False),
    "virtio-serial-pci": (parse_virtio_serial, {"id"}, True),
    "virtconsole": (parse_virtconsole, {"id", "chardev"}, False),
    "vhost-vsock-device": (parse_vsock, _VSOCK, False),
    "vhost-vsock-pci": (parse_vsock, _VSOCK, True),
    "virtio-balloon-device": (parse_balloon, _BALLOON, False),
    "virtio-balloon-pci": (parse_balloon, _BALLOON, True),
    "virtio-rng-device": (parse_rng, _RNG, False),
    "virtio-rng-pci": (parse_rng, _RNG, True),
    "pcie-root-port": (
        parse_root_port,
        {"id", "port"} | prop_names(m.RootPort, "pcie-root-port"),
        True,
    ),
    "vfio-pci": (parse_vfio, {"id"} | prop_names(m.Vfio, "vfio-pci"), True),
    "nec-usb-xhci": (parse_xhci, {"id", "p2", "p3", "bus", "addr"}, True),
    "usb-kbd": (parse_usb_input, {"id", "bus", "port"}, False),
    "usb-tablet": (parse_usb_input, {"id", "bus", "port"}, False),
}
NEEDS_PCI_HOST = {"pcie-root-port", "vfio-pci", "nec-usb-xhci", "usb-kbd", "usb-tablet"}
NOT_PCI_ATTACHED = {"virtio-serial-pci", "virtconsole", "usb-kbd", "usb-tablet"}


def parse_device(v: Value, st: State) -> None:
    kind = lenient_first(v.text)
    if kind is None:
        st.warn("-device without a type first is silently dropped by StratoVirt", v.index,
                "start the value with the device type, e.g. virtio-blk-device,...")  # fmt: skip
        return
    entry = DEVICES.get(kind)
    if entry is None:
        if kind in UNSUPPORTED:
            raise fail(
                f"-device {kind} is not supported by svlaunch manifests", v.index, 1, text=v.text
            )
        raise fail(f"Unsupported device: {kind}", v.index, 1, suggest(kind, DEVICES) + "see svlaunch's manifests/ corpus for the devices", v.text)  # fmt: skip
    parser, keys, pci = entry
    p = parse_props(v.text, v.index, kind, keys | (PCI_KEYS if kind != "nec-usb-xhci" else set()))
    if st.standard:
        ident = p.raw("id")
        if not ident:
            raise p.error("Device id is empty", "id", "every device of a q35 machine needs id=...")
        if kind.endswith("-device"):
            raise p.error(
                "Virtio mmio devices Not supported!",
                "",
                f"use {kind[: -len('-device')]}-pci with bus= and addr=",
            )
        if kind not in NOT_PCI_ATTACHED:
            if ident in st.pci_ids:
                raise p.error(f"Device id {ident} existed", "id", "give each device its own id")
            st.pci_ids.add(ident)
    elif st.microvm and (pci or kind in NEEDS_PCI_HOST):
        alt = (
            f" (use {kind[: -len('-pci')]}-device)"
            if kind.endswith("-pci") and kind != "vfio-pci"
            else ""
        )
        raise p.error(
            f"No pci host found: microvm has only virtio-mmio devices{alt}",
            "",
            "or use -machine q35",
        )
    parser(p, st, pci)
