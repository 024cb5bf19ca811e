"""The importer's last step: the pools and devices it gathered → one ``Manifest``.

Also the binding rules that need the whole argv (a vhost-user netdev's chardev, NUMA distances
naming declared nodes) and the canonical choices that make ``import(cmdline(import(a)))`` equal
``import(a)``: unused rng objects are dropped (the model has no place for them, StratoVirt
ignores them), a plain virtio-serial with consoles is left implicit, ids equal to their
backend's id are left to default.
"""

from __future__ import annotations

from launcher.compile.stratovirt.import_state import Pooled, State
from launcher.compile.stratovirt.props import fail
from launcher.model import (
    Balloon,
    Boot,
    Chardev,
    ChardevBackend,
    Console,
    Cpu,
    Drive,
    Manifest,
    Memory,
    MemoryZone,
    Net,
    NetType,
    Numa,
    NumaDistance,
    NumaNode,
    Pflash,
    Rng,
    RootPort,
    Usb,
    UsbController,
    UsbKeyboard,
    UsbTablet,
    Vfio,
    VirtioSerial,
    Vsock,
)


def _vhost_user_chardevs(st: State) -> None:
    for ident, pooled in st.netdevs.items():
        f = pooled.fields
        if f["type"] is not NetType.VHOST_USER or not f.get("attached"):
            continue
        name = f["chardev"]
        entry = st.chardevs.get(name) if name else None
        if entry is None or entry.used_by is not None:
            raise fail(
                f"Chardev {name} not found or is in use" if name else "socket path is not found",
                pooled.index,
                hint="a vhost-user netdev needs chardev=ID of its own socket chardev",
            )
        c: Chardev = entry.fields["chardev"]
        if c.backend is not ChardevBackend.SOCKET or c.server or c.nowait:
            raise fail(
                f"chardev {name} of vhost-user netdev {ident} must be a client socket",
                entry.index,
                hint="drop server and nowait from that -chardev",
            )
        entry.used_by = pooled.index


def _numa(st: State) -> tuple[Numa, tuple[MemoryZone, ...]]:
    """Nodes in the argv order of their memory objects: that order is the guest RAM layout."""
    nodes = []
    ordered = sorted(st.numa_nodes, key=lambda n: st.mem_objects[n["memdev"]].index)
    for n in ordered:
        obj = st.mem_objects[n["memdev"]].fields
        memdev = None if n["memdev"] == f"mem{n['id']}" else n["memdev"]
        nodes.append(
            NumaNode(n["id"], n["cpus"], obj["size"], obj["host_nodes"], obj["policy"], memdev)
        )
    ids = {n.id for n in nodes}
    dists = []
    for d in st.numa_dists:
        for key in ("src", "dst"):
            if d[key] not in ids:
                raise fail(f"NUMA node {d[key]} ({key}) is not declared", d["index"], hint="declare it with -numa node,nodeid=...")  # fmt: skip
        dists.append(NumaDistance(d["src"], d["dst"], d["val"]))
    free = [o for o in st.mem_objects.values() if o.used_by is None]
    zones = tuple(
        MemoryZone(o.fields["id"], o.fields["size"], o.fields["host_nodes"], o.fields["policy"])
        for o in free
    )
    last_node = max((o.index for o in st.mem_objects.values() if o.used_by is not None), default=0)
    if free and free[0].index < last_node:
        st.warn(
            f"memory zone {free[0].fields['id']} comes before NUMA node memory in argv; svlaunch "
            "lays out NUMA node zones first, so guest addresses of the zones change",
            free[0].index,
            "declare node-less memory-backend-ram objects after the nodes' ones",
        )
    return Numa(tuple(nodes), tuple(dists)), zones


def device_order(pool: dict[str, Pooled]) -> list[Pooled]:
    """Declaration order, except that attached backends follow their devices' argv order.

    The guest sees devices in ``-device`` order (vda, vdb...); the backends' own order only
    places the unattached ones. Emission writes both in model order, so this is a fixpoint.
    """
    attached = iter(
        sorted((p for p in pool.values() if p.used_by is not None), key=lambda p: p.used_by or 0)
    )
    return [next(attached) if p.used_by is not None else p for p in pool.values()]


def _drive(f: dict) -> Drive:
    return Drive(**{"attached": False, **f})


def _net(f: dict) -> Net:
    return Net(**{"attached": False, **f})


def assemble(st: State) -> Manifest:
    _vhost_user_chardevs(st)
    for ident, obj in st.rng_objects.items():
        if obj.used_by is None:
            st.warn(
                f"rng-random object {ident} is used by no virtio-rng device: dropped", obj.index
            )
    numa, zones = _numa(st)
    f = dict(st.fields)
    memory = Memory(**f.pop("memory", {}), zones=zones)
    vs = st.virtio_serial
    virtio_serial = None
    if vs is not None and not (vs["id"] is None and vs["pci"] is None and st.consoles):
        virtio_serial = VirtioSerial(vs["id"], None, vs["pci"])
    usb = st.usb
    return Manifest(
        name=f.pop("name"),
        machine=st.machine,
        cpu=Cpu(**f.pop("cpu", {})),
        memory=memory,
        numa=numa,
        boot=Boot(**f.pop("boot", {})),
        iothreads=tuple(st.iothreads),
        drives=tuple(_drive(d.fields) for d in device_order(st.drives)),
        nets=tuple(_net(n.fields) for n in device_order(st.netdevs)),
        chardevs=tuple(c.fields["chardev"] for c in st.chardevs.values()),
        serial=st.serial,
        virtio_serial=virtio_serial,
        consoles=tuple(Console(**c) for c in st.consoles),
        vsock=Vsock(**st.vsock) if st.vsock else None,
        balloon=Balloon(**st.balloon) if st.balloon else None,
        rngs=tuple(Rng(**r) for r in st.rngs),
        root_ports=tuple(RootPort(**r) for r in st.root_ports),
        pflash=tuple(Pflash(**st.pflash[u]) for u in sorted(st.pflash)),
        vfio=tuple(Vfio(**v) for v in st.vfio),
        usb=Usb(
            UsbController(**usb["xhci"]) if "xhci" in usb else None,
            UsbKeyboard(**usb["keyboard"]) if "keyboard" in usb else None,
            UsbTablet(**usb["tablet"]) if "tablet" in usb else None,
        ),
        source="argv",
        **f,
    )
