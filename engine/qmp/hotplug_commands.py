"""QMP hot-replace on a microVM: backends (``blockdev-add``, ``netdev_add``), devices
(``device_add``/``device_del``) and the client's file descriptors (``getfd``/``closefd``).

The VM does the work (``engine/machine/hotplug.py``); this module turns arguments into specs and
refuses, with the reason, every option the engine would otherwise ignore: an accepted option
does what it says. File descriptors are the calling client's own (``ClientFds``): ``netdev_add
fds=NAME`` takes a descriptor that client passed with ``getfd``, never a bare engine fd number.
"""

from __future__ import annotations

from typing import Any

from engine import device_rules
from engine.qmp.argspec import BLK_DRIVERS, BLK_SLOTS, NET_DRIVERS, NET_SLOTS
from engine.qmp.control import BlockdevSpec, DeviceSpec, NetdevSpec, QmpError
from engine.qmp.registry import Dispatcher, command

#: device_add keys the builtin engine honours for a virtio-mmio slot (the rest are refused)
DEVICE_KEYS = {
    "blk": {"drive", "serial", "iothread", "num-queues", "queue-size"},
    "net": {"netdev", "mac", "mq", "iothread", "queue-size"},
}


def _unsupported(command_name: str, key: str, why: str) -> QmpError:
    return QmpError(f"{command_name}: '{key}' is not supported by the builtin engine ({why})")


@command("blockdev-add")
def _blockdev_add(d: Dispatcher, a: dict[str, Any]) -> None:
    file, cache = a["file"], a.get("cache", {})
    if not isinstance(cache, dict):
        raise QmpError("Invalid parameter type for 'cache', expected: object")
    for key in file:
        if key not in ("driver", "filename"):
            raise QmpError(f"Parameter 'file.{key}' is unexpected")
    for key in cache:
        if key not in ("direct", "no-flush"):
            raise QmpError(f"Parameter 'cache.{key}' is unexpected")
    filename = file.get("filename")
    if not isinstance(filename, str) or not filename:
        raise QmpError("Parameter 'file.filename' is missing (a host path)")
    if file.get("driver", "file") not in ("file", "host_device"):
        raise QmpError(f"Block driver '{file.get('driver')}' is not supported (use 'file')")
    if a.get("driver", "raw") not in ("raw", "file"):
        raise QmpError(f"Image format '{a.get('driver')}' is not supported (raw images only)")
    for key in ("direct", "no-flush"):
        if key in cache and not isinstance(cache[key], bool):
            raise QmpError(f"Invalid parameter type for 'cache.{key}', expected: boolean")
    if cache.get("no-flush"):
        raise _unsupported(
            "blockdev-add",
            "cache.no-flush",
            "it would complete the guest's flushes without writing: data the guest believes "
            "safe could be lost; drop it and the engine flushes as asked",
        )
    discard = a.get("discard", "ignore")
    if discard not in ("ignore", "unmap"):
        raise QmpError(f"Parameter 'discard' expects 'ignore' or 'unmap', not {discard!r}")
    if a.get("backing") is not None:
        raise _unsupported("blockdev-add", "backing", "raw images have no backing file")
    for key in ("read-zeros", "id", "options"):
        if key in a:
            raise _unsupported("blockdev-add", key, "not an option of a raw file node")
    d.control.blockdev_add(
        BlockdevSpec(
            node_name=a["node-name"],
            filename=filename,
            read_only=a.get("read-only", False),
            direct=cache.get("direct", True),
            iops=a.get("throttling.iops-total"),
            discard=discard,
        )
    )


@command("blockdev-del")
def _blockdev_del(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.blockdev_del(a["node-name"])


@command("netdev_add")
def _netdev_add(d: Dispatcher, a: dict[str, Any]) -> None:
    kind = a.get("type", "tap")
    if kind == "vhost-user" and "vhost" in a:
        raise QmpError("Argument 'vhost' is not needed for net device with vhost-user")
    if kind == "vhost-user" or "chardev" in a:
        raise QmpError("vhost-user net devices are not supported by the builtin engine")
    if kind != "tap":
        raise QmpError(f"netdev type '{kind}' is not supported (the builtin engine has taps)")
    if a.get("vhost") or "vhostfds" in a:
        raise _unsupported("netdev_add", "vhost", "hot-added NICs are served in the engine")
    for key in ("script", "downscript"):
        if a.get(key, "no") not in ("no", ""):
            raise _unsupported("netdev_add", key, "the engine runs no scripts")
    if "dnssearch" in a:
        raise _unsupported("netdev_add", "dnssearch", "an option of user-mode networking")
    ifname, refs = a.get("ifname"), [r for r in a.get("fds", "").split(":") if r]
    if not ifname and not refs:
        raise QmpError("netdev_add needs 'ifname' (a tap) or 'fds' (names given with getfd)")
    if ifname is not None:
        problem = device_rules.ifname_problem(ifname)
        if problem is not None:
            raise QmpError(f"{problem.message} ({problem.hint})")
    if ifname and refs:
        raise QmpError("netdev_add takes 'ifname' or 'fds', not both")
    if len(set(refs)) != len(refs):
        raise QmpError("netdev_add: 'fds' names the same descriptor twice")
    for ref in refs:  # one name per queue pair, ':'-separated (QEMU's fds=a:b)
        if not d.fds.has(ref):
            raise QmpError(
                f"File descriptor named '{ref}' has not been found on this connection "
                "(pass the tap fd with SCM_RIGHTS and name it with getfd first)"
            )
    fds = tuple(d.fds.take(ref) for ref in refs)
    d.control.netdev_add(NetdevSpec(a["id"], ifname, fds, a.get("queues", 1)))


@command("netdev_del")
def _netdev_del(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.netdev_del(a["id"])


def _slot(a: dict[str, Any]) -> int:
    if "addr" in a:
        text = a["addr"].lower()
        try:
            return int(text[2:] if text.startswith("0x") else text, 16)
        except ValueError:
            raise QmpError(
                f"Invalid addr '{a['addr']}': expected a hex slot number such as 0x1"
            ) from None
    if "lun" in a:
        return a["lun"] + 1
    raise QmpError("device_add needs 'addr' (the slot, e.g. \"0x0\") for a virtio-mmio device")


@command("device_add")
def _device_add(d: Dispatcher, a: dict[str, Any]) -> None:
    driver = a["driver"]
    kind = "blk" if driver in BLK_DRIVERS else "net" if driver in NET_DRIVERS else ""
    if not kind:
        raise QmpError(
            f"Driver '{driver}' cannot be hot-added on a microVM (use one of "
            f"{', '.join(BLK_DRIVERS + NET_DRIVERS)} into a pre-created slot)"
        )
    slot, limit = _slot(a), (BLK_SLOTS if kind == "blk" else NET_SLOTS)
    if slot >= limit:
        raise QmpError(f"{kind} slot {slot} is out of range (0..{limit - 1})")
    extra = {k: v for k, v in a.items() if k not in ("id", "driver", "addr", "lun")}
    for key in extra:
        if key not in DEVICE_KEYS[kind]:
            raise _unsupported("device_add", key, f"not a property of {driver}")
    d.control.device_add(DeviceSpec(a["id"], driver, kind, slot, extra))


@command("device_del")
def _device_del(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.device_del(a["id"])


@command("getfd")
def _getfd(d: Dispatcher, a: dict[str, Any]) -> None:
    fd = d.fds.take_received()
    if fd is None:
        raise QmpError("Invalid SCM message")
    d.fds.name(a["fdname"], fd)


@command("closefd")
def _closefd(d: Dispatcher, a: dict[str, Any]) -> None:
    d.fds.close_named(a["fdname"])


@command("chardev-add", "chardev-remove", refused=True)
def _chardev(d: Dispatcher, a: dict[str, Any]) -> None:
    raise QmpError("chardev hot-plug is supported by standard VMs only, not microvm")
