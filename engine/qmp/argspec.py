"""QMP command argument schemas as data, and the one checker that enforces them.

Unknown keys, missing keys and wrong types are refused the same way for every command, with
QEMU's wording ("Parameter 'x' is missing"), as ``GenericError`` (StratoVirt's class for them).
"""

from __future__ import annotations

from typing import Any

from engine.qmp.control import QmpError

# Argument types: name -> (checker, what the error says is expected).
_U64 = (0, (1 << 64) - 1)
_RANGES = {"u8": (0, 255), "u16": (0, 65535), "u32": (0, (1 << 32) - 1), "u64": _U64}


def _check_type(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in _RANGES:
        lo, hi = _RANGES[kind]
        return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    if kind == "obj":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    return True  # "any"


_EXPECT = {
    "str": "string",
    "bool": "boolean",
    "u8": "integer 0..255",
    "u16": "integer 0..65535",
    "u32": "integer 0..4294967295",
    "u64": "unsigned 64-bit integer",
    "obj": "object",
    "list": "array",
}

# Command -> {arg: type}; a leading "!" marks a required argument. Commands absent here take no
# arguments. "any" is for arguments a handler checks itself (or refuses with a reason): nothing
# accepted here is silently ignored (docs/qmp.md).
ARGS: dict[str, dict[str, str]] = {
    "qmp_capabilities": {"enable": "list"},
    "device_add": {
        "!id": "str",
        "!driver": "str",
        **{
            k: "str"
            for k in (
                "addr",
                "bus",
                "drive",
                "netdev",
                "chardev",
                "mac",
                "serial",
                "iothread",
                "host",
                "sysfsdev",
                "mq",
                "vectors",
                "romfile",
                "share-rw",
                "disable-modern",
            )
        },
        "multifunction": "bool",
        "lun": "u32",
        "num-queues": "u16",
        "queue-size": "u16",
        "boot_index": "u8",
    },
    "device_del": {"!id": "str"},
    "blockdev-add": {
        "!node-name": "str",
        "!file": "obj",
        "cache": "obj",
        "read-only": "bool",
        "throttling.iops-total": "u64",
        **{k: "any" for k in ("read-zeros", "driver", "backing", "discard", "id", "options")},
    },
    "blockdev-del": {"!node-name": "str"},
    "netdev_add": {
        "!id": "str",
        "ifname": "str",
        "fds": "str",
        "type": "str",
        "vhost": "bool",
        "vhostfds": "str",
        "queues": "u16",
        "chardev": "str",
        **{k: "any" for k in ("dnssearch", "downscript", "script")},
    },
    "netdev_del": {"!id": "str"},
    "chardev-add": {"!id": "str", "!backend": "obj"},
    "chardev-remove": {"!id": "str"},
    "getfd": {"!fdname": "str"},
    "closefd": {"!fdname": "str"},
    "balloon": {"!value": "u64"},
    "migrate": {"!uri": "str", **{k: "any" for k in ("blk", "inc", "detach", "resume")}},
    "device-list-properties": {"!typename": "str"},
    "block-commit": {
        k: "any"
        for k in (
            "job-id",
            "device",
            "base-node",
            "base",
            "top-node",
            "top",
            "backing-file",
            "speed",
            "on-error",
            "filter-node-name",
            "auto-finalize",
            "auto-dismiss",
        )
    },
    "query-named-block-nodes": {"flat": "bool"},
    "query-blockstats": {"query-nodes": "bool"},
}

#: every event the engine emits (``tests/unit/test_qmp_honest.py`` finds each emit)
EVENTS = (
    "SHUTDOWN",
    "RESET",
    "STOP",
    "RESUME",
    "DEVICE_DELETED",
    "BALLOON_CHANGED",
    "POWERDOWN",
    "GUEST_PANICKED",
    "GUEST_CRASHLOADED",
)
BLK_SLOTS, NET_SLOTS = 4, 2
BLK_DRIVERS = ("virtio-blk-device", "virtio-blk-mmio")
NET_DRIVERS = ("virtio-net-device", "virtio-net-mmio")

#: the virtio device types the engine builds, and the device_add properties each honours
TYPES: dict[str, dict[str, str]] = {
    **{
        d: {
            "addr": "str",
            "drive": "str",
            "serial": "str",
            "iothread": "str",
            "num-queues": "uint16",
            "queue-size": "uint16",
        }
        for d in BLK_DRIVERS
    },
    **{
        d: {
            "addr": "str",
            "netdev": "str",
            "mac": "str",
            "mq": "str",
            "iothread": "str",
            "queue-size": "uint16",
        }
        for d in NET_DRIVERS
    },
    "virtio-balloon-device": {},
    "virtio-rng-device": {},
    "virtio-serial-device": {},
    "vhost-vsock-device": {},
}


def check_arguments(name: str, args: dict[str, Any]) -> None:
    """Refuse missing, unknown or mistyped arguments with one ``GenericError``."""
    schema = ARGS.get(name, {})
    types = {k.lstrip("!"): t for k, t in schema.items()}
    for key in args:
        if key not in types:
            raise QmpError(f"Parameter '{key}' is unexpected")
    for spec, kind in schema.items():
        key = spec.lstrip("!")
        if key not in args:
            if spec.startswith("!"):
                raise QmpError(f"Parameter '{key}' is missing")
            continue
        if not _check_type(kind, args[key]):
            raise QmpError(f"Invalid parameter type for '{key}', expected: {_EXPECT[kind]}")
