"""Live changes over QMP: the balloon target, and drives and NICs hot-replaced in microvm's
virtio-mmio slots (docs/qmp.md, engine/machine/hotplug.py).

A changed drive is unplugged from its slot (``device_del``; ``blockdev-del`` of a backend a
previous live change added: a cold-plugged drive's backend is not a QMP node) and plugged back
with the new settings (``blockdev-add``, ``device_add addr=<its slot>``); an added one takes the
first free slot, a removed one frees its slot. NICs likewise (``netdev_del``/``netdev_add``).
Which slot holds which device is kept in the VM's GitOps record (``slots``), read from the
plan at start. Only the VM's own engine is talked to (``launcher.identity.connect``).
"""

from __future__ import annotations

import json
from typing import Any

from launcher import model as m
from launcher.errors import EngineError


class LiveError(EngineError):
    """A live change the engine refused: the caller may fall back to a restart."""


def slots_of_plan(plan: dict[str, Any]) -> dict[str, list[str | None]]:
    """Which device id holds each replaceable slot, in slot order (``engine.machine.hotplug``
    numbers a kind's slots over its cold-plugged devices and its empty slots, in plan order)."""
    slots: dict[str, list[str | None]] = {"blk": [], "net": []}
    for d in plan.get("devices", []):
        kind = d.get("kind")
        if kind == "slot" and d.get("accepts") in slots:
            slots[d["accepts"]].append(None)
        elif kind == "blk" or (kind == "net" and not d.get("vhost")):
            slots[kind].append(d.get("id"))
    return slots


def devices_of(man: m.Manifest) -> dict[str, dict[str, str]]:
    """What ``query-block`` should show of ``man``: attached drives' device ids and files."""
    return {"blk": {d.device_name: d.file for d in man.drives if d.attached}}


def device_holds(man: m.Manifest) -> set[tuple[str, str]]:
    """The runtime holds (``engine.ownfiles.plan_made_paths``) of the devices a live change may
    replace: taps by name and writable disks."""
    import os

    from engine.ownfiles import tap_hold

    netns = man.ozone.netns if man.ozone is not None else None
    taps = {(tap_hold(n.ifname, netns), "tap") for n in man.nets if n.ifname}
    return taps | {(os.path.abspath(d.file), "drive") for d in man.drives if not d.readonly}


def apply_live(
    meta: Any, old: m.Manifest, new: m.Manifest, slots: dict[str, list[str | None]]
) -> tuple[list[str], dict[str, list[str | None]]]:
    """Carry out every live change from ``old`` to ``new``; the QMP commands sent (for the
    summary) and the slots afterwards. Raises ``LiveError`` when the engine refuses one."""
    from launcher.identity import connect
    from launcher.qmpclient import QmpCommandError

    slots = {k: list(v) for k, v in slots.items()}
    sent: list[str] = []
    with connect(meta) as c:

        def run(command: str, args: dict[str, Any], missing_ok: bool = False) -> None:
            try:
                c.execute(command, args)
            except QmpCommandError as exc:
                if missing_ok and "not found" in exc.desc.lower():
                    return
                raise LiveError(
                    f"{command} {json.dumps(args)} refused: {exc.desc or exc.error_class}",
                    hint="the change needs a restart of the VM",
                ) from None
            sent.append(command)

        pairs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("blk", {d.id: d for d in old.drives}, {d.id: d for d in new.drives}),
            ("net", {n.id: n for n in old.nets}, {n.id: n for n in new.nets}),
        ]
        for kind, before, after in pairs:
            changed = [i for i in [*before, *after] if before.get(i) != after.get(i)]
            changed = list(dict.fromkeys(changed))
            freed: dict[str, int] = {}
            for ident in changed:  # unplug every changed device first: their slots free up
                dev = before.get(ident)
                if dev is None:
                    continue
                if dev.attached:
                    run("device_del", {"id": dev.device_name}, missing_ok=True)
                    freed[ident] = _free(slots[kind], dev.device_name)
                back = "blockdev-del" if kind == "blk" else "netdev_del"
                key = "node-name" if kind == "blk" else "id"
                run(back, {key: dev.id}, missing_ok=True)
            for ident in changed:
                dev = after.get(ident)
                if dev is None:
                    continue
                if kind == "blk":
                    run("blockdev-add", _blockdev(dev))
                else:
                    args = {"id": dev.id, "ifname": dev.ifname}
                    if dev.queues and dev.queues > 1:
                        args["queues"] = dev.queues
                    run("netdev_add", args)
                if dev.attached:
                    slot = _take(slots[kind], dev.device_name, freed.get(ident, -1))
                    run("device_add", _device(kind, dev, slot, new.name))
        if _target(old) != _target(new):
            run("balloon", {"value": _target(new) or new.memory.size})
    return sent, slots


def _target(man: m.Manifest) -> int | None:
    return man.balloon.target if man.balloon is not None else None


def _free(slots: list[str | None], device: str) -> int:
    """Empty the device's slot; its number (-1: it held none)."""
    for i, held in enumerate(slots):
        if held == device:
            slots[i] = None
            return i
    return -1


def _take(slots: list[str | None], device: str, old: int) -> int:
    """The device's old slot when it had one and it is free, else the first free one."""
    if 0 <= old < len(slots) and slots[old] is None:
        slots[old] = device
        return old
    if None not in slots:
        raise LiveError(
            f"no free slot for {device!r}: microvm has {len(slots)} of this kind",
            hint="remove a device first, or restart the VM",
        )
    i = slots.index(None)
    slots[i] = device
    return i


def _blockdev(d: m.Drive) -> dict[str, Any]:
    args: dict[str, Any] = {
        "node-name": d.id,
        "file": {"driver": "file", "filename": d.file},
        "read-only": d.readonly,
        "cache": {"direct": d.direct},
    }
    if d.iops is not None:
        args["throttling.iops-total"] = d.iops
    return args


def _device(kind: str, d: Any, slot: int, vm_name: str) -> dict[str, Any]:
    args: dict[str, Any] = {"id": d.device_name, "addr": f"{slot:#x}"}
    if kind == "blk":
        args.update(driver="virtio-blk-device", drive=d.id, **{"queue-size": d.queue_size})
        if d.serial is not None:
            args["serial"] = d.serial
        if d.iothread is not None:
            args["iothread"] = d.iothread
        if d.queues is not None:
            args["num-queues"] = d.queues
        return args
    from engine.device_rules import default_mac

    args.update(
        driver="virtio-net-device", netdev=d.id, mac=d.mac or default_mac(vm_name, d.id),
        **{"queue-size": d.queue_size},
    )  # fmt: skip
    if d.mq:
        args["mq"] = "on"
    if d.iothread is not None:
        args["iothread"] = d.iothread
    return args
