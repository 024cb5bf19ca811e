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
# arguments. Ignored-but-accepted keys are typed "any".
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
    "balloon": {"!value": "u64"},
    "migrate": {"!uri": "str"},
    "device-list-properties": {"!typename": "str"},
    "input_event": {"!key": "str", "!value": "any"},
    "qom-list": {"path": "str"},
    "qom_get": {"path": "str", "property": "str"},
}

EMPTY_LIST_STUBS = (
    "query-tpm-models",
    "query-tpm-types",
    "query-command-line-options",
    "query-migrate-capabilities",
    "qom-list",
    "qom_get",
    "query-block",
    "query-named-block-nodes",
    "query-blockstats",
    "query-block-jobs",
    "query-gic-capabilities",
    "query-chardev",
    "query-iothreads",
)
EMPTY_OBJECT_STUBS = ("query-qmp-schema", "query-sev-capabilities", "block-commit")
EVENTS = ("SHUTDOWN", "RESET", "STOP", "RESUME", "DEVICE_DELETED", "BALLOON_CHANGED", "POWERDOWN")
BLK_SLOTS, NET_SLOTS = 4, 2


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
