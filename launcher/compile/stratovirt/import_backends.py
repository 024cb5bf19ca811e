"""argv → model for backends: ``-drive``, ``-netdev``, ``-chardev``, ``-serial``, ``-object``, ``-numa``.

One ``parse_<option>`` per option, each reading one value element with StratoVirt v2.2's keys,
types and per-option checks (messages in StratoVirt's words plus a hint), declaring the backend in
the importer's pools. Cross-option rules are left to ``launcher.validate.check_model``.
"""

from __future__ import annotations

from engine.device_rules import aio_problem
from launcher import model as m
from launcher.compile.stratovirt.common import PathKind
from launcher.compile.stratovirt.declared import prop_names, read_props
from launcher.compile.stratovirt.import_state import Pooled, State
from launcher.compile.stratovirt.props import (
    Props,
    fail,
    lenient_first,
    lenient_get,
    parse_props,
    read_intlist,
    read_size,
)
from launcher.compile.stratovirt.tokens import Value
from launcher.model import Chardev, ChardevBackend, NetType, NumaPolicy

MAX_NODES = 128


def _dup(p: Props, what: str, ident: str) -> None:
    raise p.error(f"{what} {ident} has been added", "id", f"give each {what.lower()} its own id")


# -- -drive ------------------------------------------------------------------------------------

DRIVE_KEYS = {"id", "file", "if"}  # and the optional keys declared on m.Drive
PFLASH_KEYS = {"if", "file", "unit"}  # and those declared on m.Pflash


def parse_drive(v: Value, st: State) -> None:
    kind = lenient_get(v.text, "if") or "none"
    if kind == "pflash":
        return parse_pflash(v, st)
    if kind != "none":
        raise fail(
            f"Unknow 'if' argument: {kind}", v.index, hint="use if=none (block) or if=pflash"
        )
    p = parse_props(
        v.text, v.index, "-drive", DRIVE_KEYS | prop_names(m.Drive, "-drive"), positional=False
    )
    ident = p.require("id")
    if ident in st.drives:
        _dup(p, "Drive", ident)
    file = st.path(p.require("file"), PathKind.INPUT, v.index)
    fmt = p.raw("format") or "raw"
    if fmt != "raw":
        raise p.error(f"Only 'raw' format is supported for -drive, got '{fmt}'", "format")
    fields = read_props(p, m.Drive, "-drive")
    aio = fields["aio"]
    if aio is not None and aio_problem(str(aio), fields["direct"]) is not None:
        if aio is m.Aio.NATIVE:
            raise p.error("aio=native requires direct=on", "aio", "drop aio or use aio=io_uring")
        raise p.error(
            "Low performance expected when use sync io with info direct on",
            "aio",
            "with direct=on use aio=native or io_uring, or set direct=off",
        )
    st.drives[ident] = Pooled(dict(id=ident, file=file, **fields), v.index)
    st.at(f"drives.{ident}", v.index)


def parse_pflash(v: Value, st: State) -> None:
    keys = PFLASH_KEYS | prop_names(m.Pflash, "-drive if=pflash")
    p = parse_props(v.text, v.index, "-drive if=pflash", keys, positional=False)
    file = st.path(p.require("file"), PathKind.INPUT, v.index)
    unit_text = p.require("unit", "add unit=0 (firmware code) or unit=1 (variables)")
    unit = p.uint("unit", 64, 0, 1)
    assert unit is not None, unit_text
    if unit in st.pflash:
        raise p.error(
            f"pflash unit {unit} is given twice", "unit", "use unit=0 and unit=1 once each"
        )
    fmt = p.raw("format") or "raw"
    if fmt != "raw":
        raise p.error(f"Only 'raw' format is supported for pflash, got '{fmt}'", "format")
    st.pflash[unit] = dict(unit=unit, file=file, **read_props(p, m.Pflash, "-drive if=pflash"))
    st.at(f"pflash.{unit}", v.index)


# -- -netdev -----------------------------------------------------------------------------------

NETDEV_KEYS = {"id"}  # and the optional keys declared on m.Net


def parse_netdev(v: Value, st: State) -> None:
    p = parse_props(v.text, v.index, "-netdev", NETDEV_KEYS | prop_names(m.Net, "-netdev"))
    kind = p.positional
    if kind not in ("tap", "vhost-user"):
        raise p.error(
            f"Invalid netdev type '{kind}'" if kind else "netdev type is missing",
            "",
            "write -netdev tap,id=... or -netdev vhost-user,id=... (there is no type= key)",
        )
    ident = p.require("id")
    if ident in st.netdevs:
        _dup(p, "Netdev", ident)
    fields = read_props(p, m.Net, "-netdev")
    fds, vhostfds = fields["fds"], fields["vhostfds"]
    if p.has("fd") and p.has("fds"):
        st.warn("both fd and fds given: StratoVirt uses fd", v.index, "give only one of them")
    if vhostfds and not (fields["vhost"] or kind == "vhost-user"):
        key = "vhostfd" if p.has("vhostfd") else "vhostfds"
        raise p.error(f"Argument '{key}' is not needed for virtio-net device", key, "add vhost=on")
    if kind == "tap" and not (p.has("ifname") or fds):
        raise p.error(
            "Tap device is missing, use 'ifname' or 'fd' to configure a tap device",
            "",
            "add ifname=tap0",
        )
    for key, count in (("fds", len(fds)), ("vhostfds", len(vhostfds))):
        if count > 16:
            raise p.error(f"at most 16 {key} (32 queues) are supported, got {count}", key)
    st.netdevs[ident] = Pooled(dict(id=ident, type=NetType(kind), **fields), v.index)
    st.at(f"nets.{ident}", v.index)


# -- -chardev and -serial ----------------------------------------------------------------------

CHARDEV_KEYS = {"id"} | prop_names(Chardev, "-chardev")  # -serial's too (its id is fixed)


def chardev_from(p: Props, st: State, what: str) -> Chardev:
    backend = p.positional
    if backend not in {b.value for b in ChardevBackend}:
        raise p.error(
            f"Invalid parameter '{backend}' for '{what}'"
            if backend
            else f"{what} backend is missing",
            "",
            "the backend is one of stdio, pty, socket, file",
        )
    ident = p.require("id")
    kind = ChardevBackend(backend)
    if kind in (ChardevBackend.SOCKET, ChardevBackend.FILE) and not p.has("path"):
        raise p.error(f"'path' is missing for {backend} {what}", "", "add path=/run/vm.sock")
    fields = read_props(p, Chardev, "-chardev", lambda text, k: st.path(text, k, p.index))
    if (fields["server"] or fields["nowait"]) and kind is not ChardevBackend.SOCKET:
        key = "server" if fields["server"] else "nowait"
        raise p.error(f"'{key}' is only allowed for a socket {what}", key, f"drop '{key}'")
    return Chardev(ident, kind, **fields)


def parse_chardev(v: Value, st: State) -> None:
    p = parse_props(v.text, v.index, "-chardev", CHARDEV_KEYS)
    c = chardev_from(p, st, "chardev")
    if c.id in st.chardevs:
        _dup(p, "Chardev", c.id)
    st.chardevs[c.id] = Pooled(dict(chardev=c), v.index)
    st.at(f"chardevs.{c.id}", v.index)


def parse_serial(v: Value, st: State) -> None:
    head, sep, rest = v.text.partition(":")
    if sep and head == "chardev":
        raise fail(
            f'Chardev "{rest}" not found or is in use',
            v.index,
            hint="StratoVirt v2.2 applies -serial before any -chardev, so 'chardev:ID' never "
            "works; write the backend inline: -serial stdio | pty | socket,path=P,server,nowait "
            "| file,path=P",
        )
    # StratoVirt appends ",id=serial_chardev" and parses it as a chardev.
    items = v.text.split(",")
    if any(i.startswith("id=") for i in items):
        col = v.text.index("id=") + 1 if v.text.startswith("id=") else v.text.index(",id=") + 2
        raise fail(
            "-serial takes no id: StratoVirt names it serial_chardev",
            v.index,
            col,
            "drop id=",
            v.text,
        )
    p = parse_props(v.text + ",id=serial_chardev", v.index, "-serial", CHARDEV_KEYS)
    p.text = v.text
    st.serial = chardev_from(p, st, "serial")
    st.at("serial", v.index)


# -- -object -----------------------------------------------------------------------------------

MEM_KEYS = {"id", "size", "host-nodes", "policy"}


def parse_object(v: Value, st: State) -> None:
    kind = lenient_first(v.text)
    if kind is None:
        raise fail(
            "Object type not specified",
            v.index,
            1,
            "start with the type, e.g. iothread,id=io0",
            v.text,
        )
    if kind == "memory-backend-ram":
        return parse_memory_backend(v, st)
    if kind == "iothread":
        p = parse_props(v.text, v.index, "iothread", {"id"})
        ident = p.raw("id") or ""
        if ident in st.iothreads:
            raise p.error(f"Input id {ident} repeat for iothread", "id")
        if len(st.iothreads) >= 8:
            raise p.error("Iothread number must >= 0 and <= 8", "", "use at most 8 iothreads")
        st.iothreads.append(ident)
        st.at("iothreads", v.index)
        return None
    if kind == "rng-random":
        p = parse_props(v.text, v.index, "rng-random", {"id", "filename"})
        ident = p.require("id")
        if ident in st.rng_objects:
            raise p.error(f"Object: {ident} has been added", "id")
        text = p.require("filename")
        file = st.path(text, PathKind.KEEP if text.startswith("/dev/") else PathKind.INPUT, v.index)
        st.rng_objects[ident] = Pooled(dict(id=ident, file=file), v.index)
        st.at(f"rngs.{ident}", v.index)
        return None
    if kind in ("tls-creds-x509", "authz-simple"):
        raise fail(
            f"-object {kind} (VNC security) is not supported by svlaunch manifests",
            v.index,
            1,
            text=v.text,
        )
    raise fail(
        f"Unknow object type: {kind}",
        v.index,
        1,
        "StratoVirt v2.2 objects: memory-backend-ram, iothread, rng-random",
        v.text,
    )


def parse_memory_backend(v: Value, st: State) -> None:
    p = parse_props(v.text, v.index, "memory-backend-ram", MEM_KEYS)
    ident = p.require("id")
    if ident in st.mem_objects:
        raise p.error(f"Object: {ident} has been added", "id")
    size = p.need("size", read_size)
    hint = "StratoVirt v2.2 needs both: add host-nodes=0,policy=bind (or policy=default)"
    nodes = p.need("host-nodes", read_intlist, hint=hint)
    if any(n >= MAX_NODES for n in nodes):
        raise p.error(f"host node must be < {MAX_NODES}", "host-nodes")
    policy = p.require("policy", hint).lower()
    if policy not in {x.value for x in NumaPolicy}:
        raise p.error(
            f"Invalid policy '{policy}'", "policy", "use default, preferred, bind or interleave"
        )
    st.mem_objects[ident] = Pooled(
        dict(id=ident, size=size, host_nodes=nodes, policy=NumaPolicy(policy)), v.index
    )
    st.at(f"memory.zones.{ident}", v.index)


# -- -numa -------------------------------------------------------------------------------------


def parse_numa(v: Value, st: State) -> None:
    kind = lenient_first(v.text)
    if kind is None:
        st.warn(
            "-numa without 'node' or 'dist' is silently dropped by StratoVirt",
            v.index,
            "start it with node,",
        )
        return
    if kind == "node":
        p = parse_props(v.text, v.index, "-numa node", {"nodeid", "cpus", "memdev"})
        for key in ("nodeid", "cpus", "memdev"):
            p.require(key)
        nodeid = p.uint("nodeid", 32, 0, MAX_NODES - 1)
        if any(n["id"] == nodeid for n in st.numa_nodes):
            raise p.error("Numa node id is repeated", "nodeid", "give each node its own nodeid")
        memdev = p.require("memdev")
        obj = st.mem_objects.get(memdev)
        if obj is None or obj.used_by is not None:
            raise p.error(
                f"Object for memory-backend-ram {memdev} config not found",
                "memdev",
                "declare -object memory-backend-ram,id=... once per node",
            )
        obj.used_by = v.index
        cpus = p.need("cpus", read_intlist)
        st.numa_nodes.append(dict(id=nodeid, cpus=tuple(c & 0xFF for c in cpus), memdev=memdev))
        st.at(f"numa.nodes.{nodeid}", v.index)
        return
    if kind == "dist":
        p = parse_props(v.text, v.index, "-numa dist", {"src", "dst", "val"})
        src = p.uint("src", 32, 0, MAX_NODES - 1)
        dst = p.uint("dst", 32, 0, MAX_NODES - 1)
        val = p.uint("val", 8, 10)
        for key, x in (("src", src), ("dst", dst), ("val", val)):
            if x is None:
                p.require(key)
        if src == dst and val != 10:
            raise p.error("the distance of a node to itself must be 10", "val")
        if src != dst and val is not None and val <= 10:
            raise p.error("the distance between two nodes must be > 10", "val")
        if any((d["src"], d["dst"]) == (src, dst) for d in st.numa_dists):
            raise p.error(f"distance {src}->{dst} is given twice", "src")
        st.numa_dists.append(dict(src=src, dst=dst, val=val, index=v.index))
        st.at("numa.distances", v.index)
        return
    raise fail(
        "Unsupported args for NUMA node", v.index, 1, "use -numa node,... or -numa dist,...", v.text
    )
