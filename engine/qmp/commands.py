"""Every QMP command the builtin engine answers: lifecycle, CPUs, memory and what it refuses.

Pure apart from the ``VmControl`` it is given: the socket server feeds ``Command`` events to the
``Dispatcher`` (``engine/qmp/registry.py``) and writes back what it returns. Argument schemas are
data (``engine/qmp/argspec.py``), so unknown keys, missing keys and wrong types are refused the
same way for every command, with QEMU's wording ("Parameter 'x' is missing"). Importing this
module registers the whole table: hot-plug lives in ``hotplug_commands.py``, the block, chardev
and iothread queries in ``queries.py``.

No made-up answers (docs/qmp.md): where StratoVirt v2.2.0 stubs a query the answer comes from
the running VM in QEMU's QAPI shapes; what the engine does not do (``block-commit``, live
migration, SEV) is an error that says so; ``query-commands`` lists this table and nothing else,
``query-events`` exactly the events the engine emits.

Deliberate differences from StratoVirt (docs/stratovirt.md, "QMP"), each a fix a client can only
like: unknown commands answer ``CommandNotFound`` (StratoVirt: ``GenericError``); ``query-commands``
and ``query-events`` list wire names; every reply echoes ``id``. Extensions, as QEMU has them:
``system_powerdown``, ``query-name``, ``query-memory-size-summary``, ``closefd``; and
``x-svlaunch-query-stats`` for the TUI.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engine.qmp import hotplug_commands, queries  # noqa: F401  (they register their commands)
from engine.qmp.argspec import EVENTS, TYPES
from engine.qmp.control import QmpError, RunState
from engine.qmp.protocol import DEVICE_NOT_FOUND, STRATOVIRT_VERSION
from engine.qmp.registry import HANDLERS, REFUSED, Dispatcher, Outcome, command

__all__ = ["HANDLERS", "REFUSED", "Dispatcher", "Outcome"]


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


# -- facts about the engine -----------------------------------------------------------------


@command("query-version")
def _version(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    return {"qemu": dict(STRATOVIRT_VERSION["qemu"]), "package": "svlaunch"}


@command("query-name")
def _name(d: Dispatcher, a: dict[str, Any]) -> dict[str, str]:
    return {"name": d.control.info().name}


@command("query-commands")
def _commands(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": n} for n in sorted(set(HANDLERS) - REFUSED)]


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
    info = d.control.info()
    return [  # the one machine type the builtin engine builds
        {
            "hotpluggable-cpus": False,
            "name": info.machine,
            "numa-mem-supported": False,
            "cpu-max": 255,
            "deprecated": False,
        }
    ]


@command("qom-list-types")
def _types(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": n, "parent": "virtio-device"} for n in TYPES]


@command("device-list-properties")
def _dev_props(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, str]]:
    props = TYPES.get(a["typename"])
    if props is None:
        raise QmpError(f"Device '{a['typename']}' not found", DEVICE_NOT_FOUND)
    return [{"name": n, "type": t} for n, t in props.items()]


@command("query-vnc")
def _vnc(d: Dispatcher, a: dict[str, Any]) -> dict[str, bool]:
    return {"enabled": False}  # QEMU's answer without a VNC display


@command("query-tpm-models", "query-tpm-types")
def _tpm(d: Dispatcher, a: dict[str, Any]) -> list[str]:
    return []  # the engine has no TPM: none supported


@command("query-gic-capabilities")
def _gic(d: Dispatcher, a: dict[str, Any]) -> list[Any]:
    return []  # x86: no GIC (QEMU answers [] off ARM too)


@command("query-block-jobs")
def _block_jobs(d: Dispatcher, a: dict[str, Any]) -> list[Any]:
    return []  # the engine runs no block jobs


# -- snapshots (StratoVirt: migrate to file:DIR; docs/snapshot.md) ------------------------


@command("migrate")
def _migrate(d: Dispatcher, a: dict[str, Any]) -> None:
    for flag in ("blk", "inc", "resume"):
        if a.get(flag):
            raise QmpError(f"migrate: '{flag}' is not supported (a snapshot holds RAM and state)")
    d.control.migrate(a["uri"])


@command("query-migrate")
def _query_migrate(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    return d.control.query_migrate()


@command("migrate_cancel")
def _migrate_cancel(d: Dispatcher, a: dict[str, Any]) -> None:
    d.control.migrate_cancel()  # nothing running: QEMU's no-op


# -- what the engine does not do: an honest error, never a silent success -------------------


@command("block-commit", refused=True)
def _block_commit(d: Dispatcher, a: dict[str, Any]) -> None:
    raise QmpError(
        "block-commit is not supported: the builtin engine's drives are raw images "
        "without backing files, so there is nothing to commit"
    )


@command("query-sev-capabilities", refused=True)
def _sev(d: Dispatcher, a: dict[str, Any]) -> None:
    raise QmpError("SEV is not available: the builtin engine runs no confidential guests")


# -- the TUI --------------------------------------------------------------------------------


@command("x-svlaunch-query-stats")
def _stats(d: Dispatcher, a: dict[str, Any]) -> dict[str, Any]:
    s = d.control.stats()
    return {
        "uptime": s.uptime_s,
        "devices": [asdict(dev) for dev in s.devices],
        "vcpu-exits": list(s.vcpu_exits),
    }
