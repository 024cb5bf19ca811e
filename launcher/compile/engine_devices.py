"""Manifest → the engine plan's virtio-mmio devices: which device fills which slot. Pure.

Slot order is StratoVirt's microvm: 4 block and 2 net "replaceable slots" first (empty ones
stay as ``SlotPlan`` for hot-replace), then vhost nets, consoles, rngs, balloon and vsock. The
order is written once (``_slot_fillers``); placing the devices and counting the slots both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

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
from launcher.model import Balloon, Chardev, Console, Drive, Manifest, Net, Rng, Vsock

#: StratoVirt microvm pre-creates 4 block and 2 net transports ("replaceable slots") for hot-replace.
MICROVM_BLK_SLOTS = 4
MICROVM_NET_SLOTS = 2

#: (mmio base, irq) -> the plan of the device in that slot
Filler = Callable[[int, int], DevicePlan]


def chardev_plan(c: Chardev) -> ChardevPlan:
    return ChardevPlan(c.id, str(c.backend), c.path, c.server, c.nowait)


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
    return BlkPlan(
        id=d.device_name,
        mmio_base=base,
        irq=irq,
        iothread=d.iothread,
        file=d.file,
        readonly=d.readonly,
        direct=d.direct,
        aio=str(d.aio) if d.aio else default_aio(d.direct),
        serial=d.serial,
        iops=d.iops,
        num_queues=d.num_queues or 1,
        queue_size=d.queue_size,
        drive_id=d.id,
    )


def net_plan(vm_name: str, n: Net, base: int, irq: int) -> NetPlan:
    """A NIC's device plan; cold-plug and QMP hot-plug both build theirs here."""
    pairs = max(n.queues or 1, len(n.fds), len(n.vhostfds))
    return NetPlan(
        id=n.device_name,
        mmio_base=base,
        irq=irq,
        iothread=n.iothread,
        ifname=n.ifname,
        fds=n.fds,
        mac=n.mac or default_mac(vm_name, n.id),
        queue_pairs=pairs,
        mq=n.mq,
        vhost=bool(n.vhost),
        vhostfds=n.vhostfds,
        queue_size=n.queue_size,
        netdev_id=n.id,
    )


def _console_plan(c: Console, chardev: Chardev | None, base: int, irq: int) -> ConsolePlan:
    return ConsolePlan(
        id=c.id, mmio_base=base, irq=irq, chardev=chardev_plan(chardev) if chardev else None
    )


def _rng_plan(r: Rng, base: int, irq: int) -> RngPlan:
    return RngPlan(
        id=r.device_id or r.id,
        mmio_base=base,
        irq=irq,
        file=r.file,
        max_bytes=r.max_bytes,
        period_ms=r.period,
    )


def _balloon_plan(b: Balloon, base: int, irq: int) -> BalloonPlan:
    return BalloonPlan(
        id=b.id or "balloon0",
        mmio_base=base,
        irq=irq,
        deflate_on_oom=b.deflate_on_oom,
        free_page_reporting=b.free_page_reporting,
    )


def _vsock_plan(v: Vsock, base: int, irq: int) -> VsockPlan:
    return VsockPlan(id=v.id, mmio_base=base, irq=irq, guest_cid=v.guest_cid, vhostfd=v.vhostfd)
