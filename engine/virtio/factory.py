"""Build a virtio device model from a plan's device spec (``engine.plan``).

The machine's device manager calls ``create_device(spec, loop=..., mem=...)`` for every
``DevicePlan`` and puts the result behind an ``MmioTransport``. This is the only module that
knows the plan's field names for devices; the device classes take plain arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import HostError
from engine.machine.memory import GuestMemory
from engine.virtio.device import Loop, VirtioDevice


class Placeholder(VirtioDevice):
    """An empty virtio-mmio slot (DeviceID 0: drivers skip it), for QMP hot-replace."""

    device_id = 0

    def __init__(self, name: str, loop: Loop | None = None) -> None:
        super().__init__(name, [], 0, loop=loop)


def create_device(
    spec: Any,
    *,
    loop: Loop | None = None,
    loops: Mapping[str | None, Loop] | None = None,
    chardevs: Mapping[str, Any] | None = None,
    mem: GuestMemory | None = None,
    memory_size: int | None = None,
) -> VirtioDevice:
    """The device for ``spec`` (a ``BlkPlan``, ``NetPlan``, ``ConsolePlan``, ``RngPlan``,
    ``BalloonPlan``, ``VsockPlan`` or ``SlotPlan``), served by ``loop`` (or ``loops[spec.iothread]``).

    ``chardevs`` maps chardev ids to opened backends; a console whose chardev is not there gets
    one opened here (and closed with the device). Raises ``HostError`` with a hint on host
    problems (missing file, tap, /dev/vhost-*).
    """
    if loop is None and loops is not None:
        loop = loops.get(spec.iothread) or loops.get(None) or loops.get("main")
    kind = spec.kind
    name = f"virtio-{kind} {spec.id}"
    if kind == "blk":
        from engine.virtio.blk import Blk

        return Blk(
            name,
            spec.file,
            readonly=spec.readonly,
            direct=spec.direct,
            aio=spec.aio,
            discard=spec.discard == "unmap",
            serial=spec.serial or "",
            iops_total=spec.iops,
            num_queues=spec.num_queues,
            queue_size=spec.queue_size,
            loop=loop,
        )
    if kind == "net":
        from engine.virtio.net import Net
        from engine.virtio.tap import Tap

        pairs = spec.queue_pairs if spec.mq or spec.queue_pairs > 1 else 1
        tap = Tap.from_fds(spec.fds) if spec.fds else Tap.open(spec.ifname, pairs)
        try:
            return Net(
                name,
                tap,
                mac=spec.mac,
                queue_pairs=len(tap.fds),
                queue_size=spec.queue_size,
                vhost=spec.vhost,
                vhostfds=tuple(spec.vhostfds),
                loop=loop,
            )
        except BaseException:
            tap.close()
            raise
    if kind == "console":
        from engine.virtio.console import Console

        if spec.chardev is None:
            raise HostError(f"{name}: no chardev", hint="give the virtconsole a chardev=")
        backend = (chardevs or {}).get(spec.chardev.id)
        owns = backend is None
        if backend is None:
            from engine.machine.chardev import open_chardev

            backend = open_chardev(spec.chardev)
        dev = Console(name, backend, loop=loop)
        dev.owns_backend = owns
        return dev
    if kind == "rng":
        from engine.virtio.rng import Rng

        return Rng(name, spec.file, max_bytes=spec.max_bytes, period_ms=spec.period_ms, loop=loop)
    if kind == "balloon":
        from engine.virtio.balloon import Balloon

        size = (
            memory_size
            if memory_size is not None
            else (mem.total_size if mem is not None else None)
        )
        return Balloon(
            name,
            deflate_on_oom=spec.deflate_on_oom,
            free_page_reporting=spec.free_page_reporting,
            memory_size=size,
            loop=loop,
        )
    if kind == "vsock":
        from engine.virtio.vsock import Vsock

        return Vsock(name, spec.guest_cid, vhostfd=spec.vhostfd, loop=loop)
    if kind == "slot":
        return Placeholder(name, loop=loop)
    raise HostError(f"device {spec.id}: unknown virtio device kind {kind!r}")
