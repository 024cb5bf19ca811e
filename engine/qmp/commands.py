"""Every QMP command a StratoVirt microVM answers: argument checking, then one ``VmControl`` call.

Pure apart from the ``VmControl`` it is given: the socket server feeds it ``Command`` events
and writes back what ``Dispatcher.execute`` returns. Argument schemas are data (``ARGS``), so
unknown keys, missing keys and wrong types are refused the same way for every command, with
QEMU's wording ("Parameter 'x' is missing").

Deliberate differences from StratoVirt v2.2.0 (spec §7), each a fix a client can only like:
unknown commands answer ``CommandNotFound`` (StratoVirt: ``GenericError``); ``query-commands``
and ``query-events`` list wire names; every reply echoes ``id`` (StratoVirt drops it for
``qmp_capabilities``). Extensions: ``system_powerdown``, ``query-name`` and
``query-memory-size-summary`` (as QEMU has them) and ``x-svlaunch-query-stats`` (the TUI).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from engine.qmp.argspec import (
    BLK_SLOTS,
    EMPTY_LIST_STUBS,
    EMPTY_OBJECT_STUBS,
    EVENTS,
    NET_SLOTS,
    check_arguments,
)
from engine.qmp.control import (
    BlockdevSpec,
    DeviceSpec,
    NetdevSpec,
    QmpError,
    RunState,
    VmControl,
)
from engine.qmp.protocol import (
    COMMAND_NOT_FOUND,
    GENERIC_ERROR,
    STRATOVIRT_VERSION,
    Command,
    ErrorReply,
    Reply,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What to write back, and what to do once it is written (``quit`` exits after its reply)."""

    reply: Reply | ErrorReply
    after: Callable[[], None] | None = None


Handler = Callable[["Dispatcher", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}


def command(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn

    return register


class Dispatcher:
    """Runs commands against one VM. ``emit`` sends an event to every client; ``take_fd``
    yields the next file descriptor that arrived with the client's messages (or None)."""

    def __init__(self, control: VmControl, emit: Callable[[str, dict[str, Any]], None]) -> None:
        self.control = control
        self.emit = emit
        self.take_fd: Callable[[], int | None] = lambda: None
        self._after: Callable[[], None] | None = None

    def execute(self, cmd: Command, take_fd: Callable[[], int | None] | None = None) -> Outcome:
        handler = HANDLERS.get(cmd.name)
        if handler is None:
            return Outcome(
                ErrorReply(COMMAND_NOT_FOUND, f"The command {cmd.name} has not been found", cmd.id)
            )
        self.take_fd = take_fd or (lambda: None)
        self._after = None
        try:
            check_arguments(cmd.name, cmd.arguments)
            value = handler(self, cmd.arguments)
        except QmpError as exc:
            return Outcome(ErrorReply(exc.error_class, exc.desc, cmd.id))
        except Exception as exc:  # an engine bug must not kill the server or the connection
            log.exception("QMP command %s failed", cmd.name)
            return Outcome(ErrorReply(GENERIC_ERROR, f"{cmd.name} failed: {exc}", cmd.id))
        return Outcome(Reply({} if value is None else value, cmd.id), self._after)

    def then(self, fn: Callable[[], None]) -> None:
        self._after = fn


# -- lifecycle ------------------------------------------------------------------------------


@command("qmp_capabilities")
def _capabilities(d: Dispatcher, a: dict[str, Any]) -> None:
    for cap in a.get("enable", []):
        raise QmpError(f"Capability '{cap}' not available")


@command("quit")
def _quit(d: Dispatcher, a: dict[str, Any]) -> None:
    def after() -> None:
        d.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        d.control.quit()

    d.then(after)


@command("stop")
def _stop(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.pause()


@command("cont")
def _cont(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.resume()


@command("system_reset")
def _reset(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.reset()


@command("system_powerdown")
def _powerdown(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.powerdown()


@command("query-status")
def _status(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    st = d.control.status()
    return {"running": st is RunState.RUNNING, "singlestep": False, "status": st.value}


# -- cpus and memory ------------------------------------------------------------------------


def _props(c: Any) -> dict[str, int]:
    return {"socket-id": c.socket_id, "core-id": c.core_id, "thread-id": c.thread_in_core}


@command("query-cpus")
def _cpus(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    arch = "x86" if d.control.info().arch == "x86_64" else "arm"
    return [
        {
            "arch": arch,
            "current": True,
            "qom_path": f"/machine/unattached/device[{c.index}]",
            "halted": c.halted,
            "props": _props(c),
            "CPU": c.index,
            "thread_id": c.thread_id,
        }
        for c in d.control.query_cpus()
    ]


@command("query-hotpluggable-cpus")
def _hp_cpus(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    kind = "host-x86-cpu" if d.control.info().arch == "x86_64" else "host-aarch64-cpu"
    return [
        {
            "type": kind,
            "vcpus-count": 1,
            "props": _props(c),
            "qom-path": f"/machine/unattached/device[{c.index}]",
        }
        for c in d.control.query_cpus()
    ]


@command("balloon")
def _balloon(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.balloon_set(a["value"])


@command("query-balloon")
def _query_balloon(d: Dispatcher, a: dict[str, Any]) -> dict[str, int]:
    return {"actual": d.control.balloon_query()}


@command("query-memory-size-summary")
def _mem(d: Dispatcher, a: dict[str, Any]) -> dict[str, int]:
    return {"base-memory": d.control.info().memory, "plugged-memory": 0}


# -- hot-replace (virtio-mmio blk/net into pre-created slots) -------------------------------


@command("blockdev-add")
def _blockdev_add(d: Dispatcher, a: dict[str, Any]) -> None:
    file, cache = a["file"], a.get("cache", {})
    filename = file.get("filename")
    if not isinstance(filename, str) or not filename:
        raise QmpError("Parameter 'file.filename' is missing (a host path)")
    if file.get("driver", "file") != "file":
        raise QmpError(f"Block driver '{file.get('driver')}' is not supported (use 'file')")
    for key in ("direct", "no-flush"):
        if key in cache and not isinstance(cache[key], bool):
            raise QmpError(f"Invalid parameter type for 'cache.{key}', expected: boolean")
    d.control.blockdev_add(
        BlockdevSpec(
            node_name=a["node-name"],
            filename=filename,
            read_only=a.get("read-only", False),
            direct=cache.get("direct", True),
            no_flush=cache.get("no-flush", False),
            iops=a.get("throttling.iops-total"),
        )
    )


@command("blockdev-del")
def _blockdev_del(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.blockdev_del(a["node-name"])


@command("netdev_add")
def _netdev_add(d: Dispatcher, a: dict[str, Any]) -> None:
    if a.get("type") == "vhost-user" and "vhost" in a:
        raise QmpError("Argument 'vhost' is not needed for net device with vhost-user")
    if a.get("type") == "vhost-user" or "chardev" in a:
        raise QmpError("vhost-user net devices are not supported by the builtin engine")
    if not a.get("ifname") and not a.get("fds"):
        raise QmpError("netdev_add needs 'ifname' (a tap) or 'fds' (names from getfd)")
    fds = tuple(f for f in a.get("fds", "").split(":") if f) if "fds" in a else ()
    d.control.netdev_add(NetdevSpec(a["id"], a.get("ifname"), fds, a.get("queues", 1)))


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
    kind = "blk" if "blk" in driver else "net" if "net" in driver else ""
    if not kind:
        raise QmpError(
            f"Driver '{driver}' cannot be hot-added on a microVM "
            "(use virtio-blk-mmio or virtio-net-mmio into a pre-created slot)"
        )
    slot, limit = _slot(a), (BLK_SLOTS if kind == "blk" else NET_SLOTS)
    if slot >= limit:
        raise QmpError(f"{kind} slot {slot} is out of range (0..{limit - 1})")
    extra = {k: v for k, v in a.items() if k not in ("id", "driver", "addr", "lun")}
    d.control.device_add(DeviceSpec(a["id"], driver, kind, slot, extra))


@command("device_del")
def _device_del(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.device_del(a["id"])


@command("getfd")
def _getfd(d: Dispatcher, a: dict[str, Any]) -> None:
    fd = d.take_fd()
    if fd is None:
        raise QmpError("Invalid SCM message")
    d.control.getfd(a["fdname"], fd)


@command("chardev-add", "chardev-remove")
def _chardev(d: Dispatcher, a: dict[str, Any]) -> None:
    raise QmpError("chardev hot-plug is supported by standard VMs only, not microvm")


# -- queries and stubs ----------------------------------------------------------------------


@command("query-version")
def _version(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    return {"qemu": dict(STRATOVIRT_VERSION["qemu"]), "package": "svlaunch"}


@command("query-name")
def _name(d: Dispatcher, a: dict[str, Any]) -> dict[str, str]:
    return {"name": d.control.info().name}


@command("query-commands")
def _commands(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": n} for n in sorted(HANDLERS)]


@command("query-events")
def _events(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": n} for n in EVENTS]


@command("query-target")
def _target(d: Dispatcher, a: dict[str, Any]) -> dict[str, str]:
    return {"arch": d.control.info().arch}


@command("query-kvm")
def _kvm(d: Dispatcher, a: dict[str, Any]) -> dict[str, bool]:
    return {"enabled": True, "present": True}


@command("query-machines")
def _machines(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    std = "q35" if d.control.info().arch == "x86_64" else "virt"
    return [
        {
            "hotpluggable-cpus": False,
            "name": n,
            "numa-mem-supported": False,
            "cpu-max": 255,
            "deprecated": False,
        }
        for n in ("none", "microvm", std)
    ]


@command("qom-list-types")
def _types(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"name": "virtio-blk-device", "parent": "virtio-device"},
        {"name": "virtio-net-device", "parent": "virtio-device"},
        {"name": "virtio-balloon-device", "parent": "virtio-device"},
        {"name": "virtio-rng-device", "parent": "virtio-device"},
        {"name": "virtio-serial-device", "parent": "virtio-device"},
    ]


@command("device-list-properties")
def _dev_props(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    return []


@command("query-vnc")
def _vnc(d: Dispatcher, a: dict[str, Any]) -> None:
    raise QmpError("VNC is not configured on a microVM")


@command("migrate")
def _migrate(d: Dispatcher, a: dict[str, Any]) -> None:
    raise QmpError("migration is not supported by the builtin engine")


@command("query-migrate")
def _query_migrate(d: Dispatcher, a: dict[str, Any]) -> dict[str, str]:
    return {"status": "none"}


@command("migrate_cancel")
def _migrate_cancel(d: Dispatcher, a: dict[str, Any]) -> None:
    return None


@command(*EMPTY_LIST_STUBS)
def _empty_list(d: Dispatcher, a: dict[str, Any]) -> list[Any]:
    return []


@command(*EMPTY_OBJECT_STUBS)
def _empty_obj(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    return {}


@command("x-svlaunch-query-stats")
def _stats(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    s = d.control.stats()
    return {
        "uptime": s.uptime_s,
        "devices": [asdict(dev) for dev in s.devices],
        "vcpu-exits": list(s.vcpu_exits),
    }
