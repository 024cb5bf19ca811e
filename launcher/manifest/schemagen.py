"""The manifest's JSON Schema, built from compact Python definitions.

Why Python and not a hand-written JSON file: every key needs a type, a description, a default
and the StratoVirt option it compiles to (``x-stratovirt``), and the same facts feed the docs
table in ``docs/manifest.md``. ``schema/svlaunch.schema.json`` is this module's output
(``python -m launcher.manifest.schemagen > schema/svlaunch.schema.json``); a test keeps the two
equal, and the CLI uses this module so an installed wheel needs no data file.

The schema checks shape only (keys, types, enums, syntax patterns). Ranges and cross-field
rules live in ``launcher.validate`` where messages can name values, limits and fixes.
"""

from __future__ import annotations

import sys
from typing import Any

SCHEMA_ID = "https://svlaunch.dev/schema/svlaunch.schema.json"
SIZE_PATTERN = r"^\s*[0-9]+\s*([KMGTkmgt](i?B)?|B)?\s*$"
INTLIST_PATTERN = r"^\s*\[?\s*[0-9]+(\s*-\s*[0-9]+)?(\s*[,:]\s*[0-9]+(\s*-\s*[0-9]+)?)*\s*\]?\s*$"
ADDR_PATTERN = r"^\s*(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+))?\s*$"

J = dict[str, Any]


def _p(schema: J, desc: str, default: Any = None, sv: str | None = None) -> J:
    schema = dict(schema)
    schema["description"] = desc
    if default is not None:
        schema["default"] = default
    if sv:
        schema["x-stratovirt"] = sv
    return schema


def string(desc: str, default: str | None = None, sv: str | None = None, **kw: Any) -> J:
    return _p({"type": "string", **kw}, desc, default, sv)


def path(desc: str, default: str | None = None, sv: str | None = None) -> J:
    return string(
        desc + " Relative paths resolve against the manifest's folder.", default, sv, minLength=1
    )


def boolean(desc: str, default: bool | None = None, sv: str | None = None) -> J:
    return _p({"type": "boolean"}, desc, default, sv)


def integer(desc: str, default: int | None = None, sv: str | None = None, **kw: Any) -> J:
    return _p({"type": "integer", "minimum": 0, **kw}, desc, default, sv)


def enum(desc: str, values: list[str], default: str | None = None, sv: str | None = None) -> J:
    return _p({"type": "string", "enum": values}, desc, default, sv)


def size(desc: str, default: str | None = None, sv: str | None = None) -> J:
    return _p(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ]
        },
        desc + " An integer number of bytes, or a string with a K/M/G/T (or KiB/MiB/GiB/TiB)"
        ' suffix: "512M", "1G".',
        default,
        sv,
    )


def intlist(desc: str, sv: str | None = None) -> J:
    return _p(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": INTLIST_PATTERN},
            ]
        },
        desc + ' A list of integers or a string like "0-1,4".',
        None,
        sv,
    )


def str_or_list(desc: str, default: Any = None, sv: str | None = None) -> J:
    return _p(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ]
        },
        desc,
        default,
        sv,
    )


def int_list(desc: str, sv: str | None = None) -> J:
    return _p({"type": "array", "items": {"type": "integer", "minimum": 0}}, desc, None, sv)


def obj(desc: str, props: dict[str, J], required: tuple[str, ...] = (), sv: str | None = None) -> J:
    schema: J = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        schema["required"] = list(required)
    return _p(schema, desc, None, sv)


def table_of(desc: str, item: J, sv: str | None = None) -> J:
    """A table keyed by id (``[drives.rootfs]``): the key is the id StratoVirt sees."""
    return _p(
        {"type": "object", "additionalProperties": item, "propertyNames": {"minLength": 1}},
        desc + " Keyed by id; declaration order is kept.",
        None,
        sv,
    )


def array_of(desc: str, item: J, sv: str | None = None) -> J:
    return _p({"type": "array", "items": item}, desc, None, sv)


def _pci_props(default_hint: str = "mmio on microvm, pci on q35/virt") -> dict[str, J]:
    return {
        "transport": enum(
            f"virtio transport: mmio (``*-device``) or pci (``*-pci``); default: {default_hint}.",
            ["mmio", "pci"],
            sv="-device <name>-device | <name>-pci",
        ),
        "bus": string(
            'PCI bus: "pcie.0" or a root port id (pci transport only).',
            "pcie.0",
            sv="bus=",
            minLength=1,
        ),
        "addr": _p(
            {
                "anyOf": [
                    {"type": "string", "pattern": ADDR_PATTERN},
                    {"type": "integer", "minimum": 0},
                ]
            },
            'PCI slot and function: "0x3" or "0x3.0x1"; digits without 0x are decimal'
            " (pci transport only).",
            sv="addr=",
        ),
        "multifunction": boolean(
            "Allow other functions in this slot (pci only).", False, sv="multifunction=on|off"
        ),
    }


def build_schema() -> J:
    """The whole manifest schema (JSON Schema draft 2020-12)."""
    policy = enum(
        "Host memory policy (mbind).",
        ["default", "preferred", "bind", "interleave"],
        "default",
        sv="policy=",
    )
    host_nodes = intlist(
        "Host NUMA nodes the memory is bound to (v2.2.0 requires it; svlaunch"
        " defaults to 0, harmless with policy default).",
        sv="host-nodes=",
    )
    host_nodes["default"] = [0]
    chardev_props = {
        "backend": enum(
            "Where the character device goes.",
            ["stdio", "pty", "socket", "file"],
            sv="-chardev <backend>",
        ),
        "path": path("Socket or file path (required for socket and file).", sv="path="),
        "server": boolean(
            "Listen on the socket instead of connecting (socket only).", False, sv="server"
        ),
        "nowait": boolean(
            "Do not wait for a client before starting (socket only).", False, sv="nowait"
        ),
    }
    drive = obj(
        "A virtio-blk disk: the -drive backend and its device.",
        {
            "file": path("Disk image or block device on the host.", sv="-drive file="),
            "readonly": boolean("Open the image read-only.", False, sv="readonly=on|off"),
            "direct": boolean("Open with O_DIRECT.", True, sv="direct=on|off"),
            "aio": enum(
                "Async I/O engine; default native when direct, else off.",
                ["native", "io_uring", "off"],
                sv="aio=",
            ),
            "format": enum(
                "Image format (StratoVirt v2.2.0 supports raw only).",
                ["raw", "qcow2"],
                "raw",
                sv="format=",
            ),
            "iops": integer(
                "I/O operations per second limit (at most 1000000).", sv="throttling.iops-total="
            ),
            "serial": string("Serial number the guest sees (at most 20 bytes).", sv="serial="),
            "iothread": string(
                "Iothread (declared in iothreads) that serves the disk.", sv="iothread="
            ),
            "queues": integer(
                "Number of virtqueues (1-32); default 1 on mmio, min(cpus, 32) on pci.",
                sv="num-queues=",
            ),
            "queue-size": integer("Virtqueue size: a power of two, 4-1024.", 256, sv="queue-size="),
            "bootindex": integer(
                "Boot order for firmware (0-255, lower boots first).", sv="bootindex="
            ),
            "attached": boolean(
                "Create the virtio-blk device (false: backend only, for hot plug).", True
            ),
            "device-id": string(
                "Device id, if it must differ from the drive id.", sv="id=", minLength=1
            ),
            **_pci_props(),
        },
        required=("file",),
        sv="-drive id=<id>,file=... -device virtio-blk-*,drive=<id>",
    )
    net = obj(
        "A virtio-net NIC: the -netdev backend and its device.",
        {
            "type": enum("Backend type.", ["tap", "vhost-user"], "tap", sv="-netdev <type>"),
            "ifname": string("Host tap device name (at most 15 bytes).", sv="ifname=", minLength=1),
            "fds": int_list("Inherited tap file descriptors, one per queue pair.", sv="fd=/fds="),
            "vhost": boolean("Use the vhost-net kernel backend.", sv="vhost=on|off"),
            "vhostfds": int_list(
                "Inherited /dev/vhost-net file descriptors (needs vhost).", sv="vhostfd=/vhostfds="
            ),
            "queues": integer("Queue pairs (1-16).", sv="queues="),
            "chardev": string(
                "Socket chardev of a vhost-user backend (a client socket).", sv="chardev="
            ),
            "attached": boolean("Create the virtio-net device (false: backend only).", True),
            "device-id": string(
                "Device id, if it must differ from the netdev id.", sv="id=", minLength=1
            ),
            "mac": string("Guest MAC address, six hex pairs: 52:54:00:12:34:56.", sv="mac="),
            "mq": boolean("Enable multiqueue in the guest.", False, sv="mq=on|off"),
            "iothread": string(
                "Iothread that serves the NIC (ignored with vhost).", sv="iothread="
            ),
            "queue-size": integer(
                "Virtqueue size: a power of two, 256-4096.", 256, sv="queue-size="
            ),
            **_pci_props(),
        },
        sv="-netdev <type>,id=<id>,... -device virtio-net-*,netdev=<id>",
    )
    serial = _p(
        {
            "anyOf": [
                {"type": "string", "enum": ["stdio", "pty"]},
                obj(
                    "Serial backend.",
                    {k: v for k, v in chardev_props.items()},
                    required=("backend",),
                ),
            ]
        },
        'The legacy serial port (ttyS0): "stdio", "pty", or a table with backend/path.',
        sv="-serial <backend>[,path=...]",
    )
    rng = obj(
        "A virtio-rng device and its rng-random object.",
        {
            "file": path("Host entropy source.", "/dev/urandom", sv="-object rng-random,filename="),
            "max-bytes": integer("Bytes allowed per period (with period).", sv="max-bytes="),
            "period": integer("Rate-limit period in milliseconds (with max-bytes).", sv="period="),
            "device-id": string(
                "Device id, if it must differ from the object id.", sv="id=", minLength=1
            ),
            **_pci_props(),
        },
        sv="-object rng-random,id=<id>,filename=... -device virtio-rng-*,rng=<id>",
    )
    pci_only = {k: v for k, v in _pci_props().items() if k != "transport"}
    ozone_caps = array_of(
        "Capabilities kept (CAP_*); all others are dropped. Absent: drop all.",
        {"type": "string", "minLength": 1},
        sv="-capability",
    )
    props: dict[str, J] = {
        "$schema": string("Schema URL for editors (ignored).", minLength=1),
        "name": string(
            "VM name (at most 255 bytes; unique among VMs on a host).", sv="-name", minLength=1
        ),
        "arch": enum("Guest and host architecture.", ["x86_64", "aarch64"], "x86_64"),
        "seccomp": boolean(
            "Install StratoVirt's syscall filter.", True, sv="-disable-seccomp when false"
        ),
        "paused": boolean("Create vCPUs paused (resume with QMP cont).", False, sv="-S"),
        "incoming": string(
            'Restore from a snapshot or migration: "file:PATH", "unix:PATH" or "tcp:IP:PORT".',
            sv="-incoming",
            minLength=1,
        ),
        "daemonize": boolean(
            "Run StratoVirt as a daemon (no stdio devices allowed).", False, sv="-daemonize"
        ),
        "pidfile": path("Where the daemon writes its pid (requires daemonize).", sv="-pidfile"),
        "trace": path("File listing trace events to enable.", sv="-trace events="),
        "iothreads": array_of(
            "Iothread ids (at most 8).",
            {"type": "string", "minLength": 1},
            sv="-object iothread,id=",
        ),
        "qmp": str_or_list(
            "QMP unix socket path(s). Absent: svlaunch up creates one in the"
            " runtime directory; StratoVirt itself requires one.",
            sv="-qmp unix:<path>,server,nowait",
        ),
        "machine": obj(
            "Machine type and global switches.",
            {
                "type": enum(
                    "Machine type: microvm, q35 (x86_64) or virt (aarch64); none only answers QMP.",
                    ["microvm", "q35", "virt", "none"],
                    "microvm",
                    sv="-machine <type>",
                ),
                "dump-guest-core": boolean(
                    "Include guest memory in core dumps.", True, sv="dump-guest-core=on|off"
                ),
                "mem-share": boolean(
                    "Share guest memory with other processes (vhost-user).",
                    False,
                    sv="mem-share=on|off",
                ),
                "accel": enum(
                    "Accelerator (KVM is always used).", ["kvm", "kvm:tcg", "tcg"], sv="accel="
                ),
                "usb": boolean("Machine USB switch; StratoVirt only accepts false.", sv="usb=off"),
                "gic-version": integer("aarch64 GIC version (only 3).", sv="gic-version="),
            },
            sv="-machine",
        ),
        "cpu": obj(
            "vCPU count, topology and model; unset factors are derived as StratoVirt does.",
            {
                "cpus": integer("Online vCPUs (1-254).", 1, sv="-smp cpus="),
                "maxcpus": integer(
                    "Maximum vCPUs (1-254); default: the topology product or cpus.", sv="maxcpus="
                ),
                "sockets": integer("Sockets.", sv="sockets="),
                "dies": integer("Dies per socket.", sv="dies="),
                "clusters": integer("Clusters per die.", sv="clusters="),
                "cores": integer("Cores per cluster.", sv="cores="),
                "threads": integer("Threads per core.", sv="threads="),
                "model": string(
                    'CPU model; StratoVirt documents "host".', sv="-cpu <model>", minLength=1
                ),
                "pmu": boolean("Expose the PMU (aarch64 only).", sv="-cpu ...,pmu=on|off"),
            },
            sv="-smp, -cpu",
        ),
        "memory": obj(
            "Guest RAM.",
            {
                "size": size(
                    "Guest RAM size (128 MiB-512 GiB, a multiple of 1 MiB).", "256M", sv="-m"
                ),
                "path": path("Backing file or directory, e.g. a hugetlbfs mount.", sv="-mem-path"),
                "prealloc": boolean("Fault in all guest RAM at start.", False, sv="-mem-prealloc"),
                "zones": array_of(
                    "Memory zones not tied to a NUMA node (bound to host nodes all the same).",
                    obj(
                        "A memory-backend-ram object.",
                        {
                            "id": string("Object id.", sv="id=", minLength=1),
                            "size": size("Zone size.", sv="size="),
                            "host-nodes": host_nodes,
                            "policy": policy,
                        },
                        required=("id", "size"),
                    ),
                    sv="-object memory-backend-ram",
                ),
            },
            sv="-m, -mem-path, -mem-prealloc",
        ),
        "numa": obj(
            "Guest NUMA topology (standard VMs; StratoVirt ignores -numa on microvm).",
            {
                "nodes": array_of(
                    "NUMA nodes, each with its own memory-backend-ram.",
                    obj(
                        "A NUMA node.",
                        {
                            "id": integer("Node id (0-127).", sv="-numa node,nodeid="),
                            "cpus": intlist("vCPUs of this node.", sv="cpus="),
                            "size": size(
                                "Memory of this node.", sv="-object memory-backend-ram,size="
                            ),
                            "host-nodes": host_nodes,
                            "policy": policy,
                            "memdev": string(
                                'Memory object id; default "mem<id>".', sv="memdev=", minLength=1
                            ),
                        },
                        required=("id", "cpus", "size"),
                    ),
                    sv="-object memory-backend-ram + -numa node",
                ),
                "distances": array_of(
                    "Distances between nodes; missing pairs default to 10 (local) and 20.",
                    obj(
                        "A distance entry.",
                        {
                            "src": integer("Source node id.", sv="src="),
                            "dst": integer("Destination node id.", sv="dst="),
                            "val": integer(
                                "Distance: 10 for a node to itself, above 10"
                                " otherwise, at most 255.",
                                sv="val=",
                            ),
                        },
                        required=("src", "dst", "val"),
                    ),
                    sv="-numa dist",
                ),
            },
        ),
        "boot": obj(
            "Direct kernel boot.",
            {
                "kernel": path("Guest kernel (vmlinux, bzImage or arm64 Image).", sv="-kernel"),
                "initrd": path("Initial ramdisk (path at most 255 bytes).", sv="-initrd"),
                "cmdline": str_or_list(
                    "Kernel command line; a list is joined with spaces.", sv="-append"
                ),
            },
        ),
        "global": obj(
            "Global device properties.",
            {
                "pcie-root-port": obj(
                    "Root port defaults (standard VMs).",
                    {
                        "fast-unplug": boolean(
                            "Fast unplug (Kata).", sv="-global pcie-root-port.fast-unplug=0|1"
                        ),
                    },
                ),
            },
            sv="-global",
        ),
        "log": _p(
            {
                "anyOf": [
                    {"type": "boolean"},
                    obj("Log file.", {"file": path("Log file (appended).", sv="-D <file>")}),
                ]
            },
            "StratoVirt's log: true logs to stdout, a table with file logs to that file.",
            sv="-D [file]",
        ),
        "drives": table_of("Block devices.", drive, sv="-drive, -device virtio-blk-*"),
        "nets": table_of("Network devices.", net, sv="-netdev, -device virtio-net-*"),
        "chardevs": table_of(
            "Character devices for consoles, monitors and vhost-user.",
            obj("A character device.", chardev_props, required=("backend",)),
            sv="-chardev",
        ),
        "serial": serial,
        "virtio-serial": obj(
            "The virtio-serial transport for consoles (implied by consoles).",
            {
                "id": string("Device id (required on standard VMs).", sv="id=", minLength=1),
                **_pci_props(),
            },
            sv="-device virtio-serial-*",
        ),
        "consoles": table_of(
            "virtio consoles (/dev/hvc*), keyed by device id.",
            obj(
                "A virtconsole.",
                {"chardev": string("Chardev it uses (consumed).", sv="chardev=")},
                required=("chardev",),
            ),
            sv="-device virtconsole",
        ),
        "vsock": obj(
            "The vhost-vsock device (one per VM).",
            {
                "id": string("Device id.", "vsock0", sv="id=", minLength=1),
                "guest-cid": integer(
                    "Guest context id: 3-4294967294, unique on the host.", sv="guest-cid="
                ),
                "vhostfd": integer("Inherited /dev/vhost-vsock descriptor.", sv="vhostfd="),
                **_pci_props(),
            },
            required=("guest-cid",),
            sv="-device vhost-vsock-*",
        ),
        "balloon": obj(
            "The virtio-balloon device (one per VM).",
            {
                "id": string("Device id (required on standard VMs).", sv="id=", minLength=1),
                "deflate-on-oom": boolean(
                    "Deflate when the guest runs out of memory.", False, sv="deflate-on-oom="
                ),
                "free-page-reporting": boolean(
                    "Let the guest report free pages.", False, sv="free-page-reporting="
                ),
                **_pci_props(),
            },
            sv="-device virtio-balloon-*",
        ),
        "rngs": table_of("Entropy devices.", rng, sv="-object rng-random, -device virtio-rng-*"),
        "root-ports": table_of(
            "PCIe root ports (standard VMs); the id names the new bus. Quote ids with dots:"
            ' [root-ports."pcie.1"].',
            obj(
                "A pcie-root-port.",
                {
                    "port": integer("Port number (0-255).", sv="port="),
                    "chassis": integer("Chassis number (0-255, libvirt only).", sv="chassis="),
                    **pci_only,
                },
                required=("port", "addr"),
            ),
            sv="-device pcie-root-port",
        ),
        "pflash": array_of(
            "Firmware flash devices (standard VMs): unit 0 code, unit 1 variables.",
            obj(
                "A pflash drive.",
                {
                    "unit": integer("0 (firmware code) or 1 (variables).", sv="unit="),
                    "file": path("Flash image.", sv="file="),
                    "readonly": boolean("Read-only (unit 0 usually is).", False, sv="readonly="),
                    "format": enum("Image format (raw only).", ["raw"], "raw", sv="format="),
                },
                required=("unit", "file"),
            ),
            sv="-drive if=pflash",
        ),
        "vfio": table_of(
            "Host PCI devices passed through (standard VMs).",
            obj(
                "A vfio-pci device.",
                {
                    "host": string("Host PCI address DDDD:BB:DD.F.", sv="host=", minLength=1),
                    "sysfsdev": path("sysfs path of the device (instead of host).", sv="sysfsdev="),
                    **pci_only,
                },
                required=("addr",),
            ),
            sv="-device vfio-pci",
        ),
        "usb": obj(
            "USB controller and devices (standard VMs).",
            {
                "xhci": obj(
                    "The nec-usb-xhci controller.",
                    {
                        "id": string("Device id.", "xhci", sv="id=", minLength=1),
                        "p2": integer("USB 2 ports (1-15).", 4, sv="p2="),
                        "p3": integer("USB 3 ports (1-15).", 4, sv="p3="),
                        **{k: v for k, v in pci_only.items() if k != "multifunction"},
                    },
                    required=("addr",),
                    sv="-device nec-usb-xhci",
                ),
                "keyboard": obj(
                    "A USB keyboard.",
                    {"id": string("Device id.", "kbd", sv="id=", minLength=1)},
                    sv="-device usb-kbd",
                ),
                "tablet": obj(
                    "A USB tablet.",
                    {"id": string("Device id.", "tablet", sv="id=", minLength=1)},
                    sv="-device usb-tablet",
                ),
            },
        ),
        "monitors": array_of(
            "QMP monitors on declared socket chardevs (server and nowait).",
            obj(
                "A monitor.",
                {
                    "chardev": string("Socket chardev (consumed).", sv="chardev="),
                    "id": string("Monitor id.", sv="id=", minLength=1),
                },
                required=("chardev",),
            ),
            sv="-mon chardev=<id>,id=<id>,mode=control",
        ),
        "ozone": obj(
            "Run inside the ozone sandbox.",
            {
                "exec-file": path(
                    "The StratoVirt binary (statically linked).", sv="ozone -exec-file"
                ),
                "uid": integer("User id (at most 65535).", sv="-uid"),
                "gid": integer("Group id (at most 65535).", sv="-gid"),
                "name": string(
                    "Sandbox name (at most 255 bytes); default: the VM name.",
                    sv="-name",
                    minLength=1,
                ),
                "capabilities": ozone_caps,
                "netns": path("Network namespace file, e.g. /var/run/netns/web.", sv="-netns"),
                "sources": array_of(
                    "Extra files bind-mounted into the jail.",
                    {"type": "string", "minLength": 1},
                    sv="-source",
                ),
                "numa": string("Host NUMA node(s) for cpuset.mems.", sv="-numa", minLength=1),
                "cgroup": _p(
                    {"type": "object", "additionalProperties": {"type": "string"}},
                    "cgroup v1 values: cpuset.cpus and memory.limit_in_bytes.",
                    sv="-cgroup key=value ...",
                ),
                "clean-resource": boolean(
                    "Tear down a previous sandbox instead of launching.",
                    False,
                    sv="-clean-resource",
                ),
                "root": path("Jail base folder (svlaunch extension).", "/srv/ozone"),
            },
            required=("exec-file", "uid", "gid"),
            sv="ozone",
        ),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "svlaunch manifest",
        "description": "One VM for svlaunch (StratoVirt v2.2.0 semantics). TOML or YAML.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": props,
    }


def schema_json() -> str:
    """The schema as the text of ``schema/svlaunch.schema.json``."""
    import json  # not at the top: loading a manifest needs build_schema() only

    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def _type_text(s: J) -> str:
    if "anyOf" in s:
        return " or ".join(_type_text(x) for x in s["anyOf"])
    if "enum" in s:
        return " \\| ".join(f"`{v}`" for v in s["enum"])
    t = s.get("type", "")
    if t == "string" and "pattern" in s:
        return "string (syntax)"
    if t == "array":
        return f"list of {_type_text(s.get('items', {}))}"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return "table by id"
    return {"object": "table"}.get(t, t)


def markdown_reference() -> str:
    """The field reference of ``docs/manifest.md``: one row per key, every key of the schema."""
    import json

    rows = ["| key | type | default | StratoVirt | description |", "|---|---|---|---|---|"]

    def walk(s: J, prefix: str) -> None:
        props = s.get("properties", {})
        if not props and isinstance(s.get("additionalProperties"), dict):
            walk(s["additionalProperties"], prefix + ".<id>")
            return
        if not props and s.get("type") == "array" and isinstance(s.get("items"), dict):
            walk(s["items"], prefix + "[]")
            return
        for sub in s.get("anyOf", []):
            if sub.get("type") == "object":
                walk(sub, prefix)
        for key, sub in props.items():
            if key == "$schema":
                continue
            path = f"{prefix}.{key}" if prefix else key
            default = sub.get("default")
            dtext = "" if default is None else f"`{json.dumps(default)}`"
            sv = sub.get("x-stratovirt", "").replace("|", "\\|")
            desc = sub.get("description", "").replace("|", "\\|")
            req = " **required**" if key in s.get("required", ()) else ""
            rows.append(
                f"| `{path}` | {_type_text(sub)} | {dtext} | {sv and '`' + sv + '`'} "
                f"| {desc}{req} |"
            )
            walk(sub, path)

    walk(build_schema(), "")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_reference() if sys.argv[1:] == ["--markdown"] else schema_json())
