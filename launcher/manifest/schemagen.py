"""The manifest's JSON Schema, built from compact Python definitions.

Why Python and not a hand-written JSON file: every key needs a type, a description, a default
and the StratoVirt option it compiles to (``x-stratovirt``), and the same facts feed the docs
table in ``docs/manifest.md``. ``schema/svlaunch.schema.json`` is this module's output
(``python -m launcher.manifest.schemagen > schema/svlaunch.schema.json``); a test keeps the two
equal, and the CLI uses this module so an installed wheel needs no data file.

The schema checks shape only (keys, types, enums, syntax patterns). Ranges and cross-field
rules live in ``launcher.validate`` where messages can name values, limits and fixes.

This module holds the machine-level keys; the fragment constructors are in ``schema_vocab``,
the device tables in ``schema_devices`` and the markdown table in ``schema_doc``.
"""

from __future__ import annotations

import sys

from launcher.manifest.schema_devices import device_properties
from launcher.manifest.schema_vocab import (  # re-exported: other modules import them from here
    ADDR_PATTERN,
    INTLIST_PATTERN,
    SCHEMA_ID,
    SIZE_PATTERN,
    J,
    array_of,
    boolean,
    enum,
    integer,
    intlist,
    obj,
    path,
    prop,
    size,
    str_or_list,
    string,
)

__all__ = [
    "ADDR_PATTERN",
    "INTLIST_PATTERN",
    "SCHEMA_ID",
    "SIZE_PATTERN",
    "build_schema",
    "markdown_reference",
    "schema_json",
]


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
        "log": prop(
            {
                "anyOf": [
                    {"type": "boolean"},
                    obj("Log file.", {"file": path("Log file (appended).", sv="-D <file>")}),
                ]
            },
            "StratoVirt's log: true logs to stdout, a table with file logs to that file.",
            sv="-D [file]",
        ),
        **device_properties(),
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
                "cgroup": prop(
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


def markdown_reference() -> str:
    """The field reference of ``docs/manifest.md``: one row per key, every key of the schema."""
    from launcher.manifest.schema_doc import markdown_table

    return markdown_table(build_schema())


if __name__ == "__main__":
    sys.stdout.write(markdown_reference() if sys.argv[1:] == ["--markdown"] else schema_json())
