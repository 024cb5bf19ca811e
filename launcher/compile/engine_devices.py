"""Manifest → the engine plan's virtio-mmio devices: which device fills which slot. Pure.

Slot order is StratoVirt's microvm: 4 block and 2 net "replaceable slots" first (empty ones
stay as ``SlotPlan`` for hot-replace), then vhost nets, consoles, rngs, balloon and vsock. The
order is written once (``_slot_fillers``); placing the devices and counting the slots both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from engine.device_rules import default_aio, default_mac
from engine.machine import layout
from engine.plan import (
    BalloonPlan,
    BlkPlan,
    ChardevPlan,
    ConsolePlan,
    DevicePlan,
    NetPlan,
    RngPlan,
    SlotPlan,
    VsockPlan,
)
from launcher import keys as k

if TYPE_CHECKING:
    from launcher.model import Balloon, Chardev, Console, Drive, Manifest, Net, Rng, Vsock

#: StratoVirt microvm pre-creates 4 block and 2 net transports ("replaceable slots") for hot-replace.
MICROVM_BLK_SLOTS = 4
MICROVM_NET_SLOTS = 2

P = TypeVar("P")
#: (mmio base, irq) -> the plan of the device in that slot
Filler = Callable[[int, int], DevicePlan]


def planned(obj: Any, plan: type[P], **derived: Any) -> P:
    """A ``plan`` value from the fields ``obj``'s keys feed as they are (their ``plan=``
    declaration, enums as their words) and the ``derived`` ones (defaults that depend on other
    keys, placement), which win."""
    prefix = plan.__name__ + "."
    fields = {}
    for s in k.specs(type(obj)):
        if s.decl.plan and s.decl.plan.startswith(prefix):
            value = getattr(obj, s.attr)
            fields[s.decl.plan[len(prefix) :]] = value.value if isinstance(value, Enum) else value
    return plan(**{**fields, **derived})


def chardev_plan(c: Chardev) -> ChardevPlan:
    return planned(c, ChardevPlan)


def device_plans(m: Manifest) -> list[DevicePlan]:
    """The virtio-mmio devices in slot order, each with its window and IRQ."""
    return [fill(*layout.virtio_mmio_slot(i)) for i, fill in enumerate(_slot_fillers(m))]


def mmio_slot_count(m: Manifest) -> int:
    """How many virtio-mmio windows ``device_plans`` places (checked before placing them)."""
    return len(_slot_fillers(m))


def _slot_fillers(m: Manifest) -> list[Filler]:
    chardevs = {c.id: c for c in m.chardevs}
    fillers: list[Filler] = []
    drives = [d for d in m.drives if d.attached]
    for i in range(max(MICROVM_BLK_SLOTS, len(drives))):
        fillers.append(partial(blk_plan, drives[i]) if i < len(drives) else _empty(i, "blk"))
    nets = [n for n in m.nets if n.attached]
    plain = [n for n in nets if not n.vhost]
    for i in range(max(MICROVM_NET_SLOTS, len(plain))):
        fillers.append(partial(net_plan, m.name, plain[i]) if i < len(plain) else _empty(i, "net"))
    fillers += [partial(net_plan, m.name, n) for n in nets if n.vhost]
    fillers += [partial(_console_plan, c, chardevs.get(c.chardev)) for c in m.consoles]
    fillers += [partial(_rng_plan, r) for r in m.rngs]
    if m.balloon:
        fillers.append(partial(_balloon_plan, m.balloon))
    if m.vsock:
        fillers.append(partial(_vsock_plan, m.vsock))
    return fillers


def _empty(i: int, kind: str) -> Filler:
    return lambda base, irq: SlotPlan(id=f"{kind}-slot{i}", mmio_base=base, irq=irq, accepts=kind)


def blk_plan(d: Drive, base: int, irq: int) -> BlkPlan:
    """A drive's device plan; cold-plug and QMP hot-plug both build theirs here."""
    return planned(
        d,
        BlkPlan,
        id=d.device_name,
        mmio_base=base,
        irq=irq,
        aio=str(d.aio) if d.aio else default_aio(d.direct),
        num_queues=d.queues or 1,  # virtio-mmio: one queue unless asked
    )


def net_plan(vm_name: str, n: Net, base: int, irq: int) -> NetPlan:
    """A NIC's device plan; cold-plug and QMP hot-plug both build theirs here."""
    return planned(
        n,
        NetPlan,
        id=n.device_name,
        mmio_base=base,
        irq=irq,
        mac=n.mac or default_mac(vm_name, n.id),
        queue_pairs=max(n.queues or 1, len(n.fds), len(n.vhostfds)),  # one pair per fd
        vhost=bool(n.vhost),
    )


def _console_plan(c: Console, chardev: Chardev | None, base: int, irq: int) -> ConsolePlan:
    return ConsolePlan(
        id=c.id, mmio_base=base, irq=irq, chardev=chardev_plan(chardev) if chardev else None
    )  # the console's chardev key names the chardev whose plan it carries


def _rng_plan(r: Rng, base: int, irq: int) -> RngPlan:
    return planned(r, RngPlan, id=r.device_id or r.id, mmio_base=base, irq=irq)


def _balloon_plan(b: Balloon, base: int, irq: int) -> BalloonPlan:
    return planned(b, BalloonPlan, id=b.id or "balloon0", mmio_base=base, irq=irq)


def _vsock_plan(v: Vsock, base: int, irq: int) -> VsockPlan:
    return planned(v, VsockPlan, mmio_base=base, irq=irq)
