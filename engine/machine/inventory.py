"""What a built machine holds, as QMP reports it: block nodes, chardevs, iothreads.

The answers to ``query-block``/``query-blockstats``/``query-named-block-nodes``,
``query-chardev`` and ``query-iothreads`` come from here, read off the running devices (their
files, their own counters, their back ends' connection state, their threads): never from the
plan alone, and never made up. ``engine.vm`` calls these when QMP asks (imported then).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from engine.errors import HostError
from engine.hostfiles import open_host_file
from engine.plan import BlkPlan, ConsolePlan
from engine.qmp.control import BlockInfo, ChardevInfo, IoThreadInfo

if TYPE_CHECKING:
    from engine.machine.builder import Machine


def _sizes(fd: int) -> tuple[int, int]:
    """(virtual size, bytes allocated on the host) of an open image."""
    st = os.fstat(fd)
    return os.lseek(fd, 0, os.SEEK_END), st.st_blocks * 512


def _path_sizes(path: str) -> tuple[int, int]:
    try:
        fd = open_host_file(path, what="block node")
    except HostError:
        return 0, 0  # gone since blockdev-add: device_add would refuse it too
    try:
        return _sizes(fd)
    finally:
        os.close(fd)


def block_nodes(m: Machine, unused: list[Any]) -> list[BlockInfo]:
    """Every virtio-blk drive in transport order, then ``unused`` ``blockdev-add`` specs."""
    out = []
    for att in m.devices.virtio:
        spec, dev = att.spec, att.transport.device
        if not isinstance(spec, BlkPlan):
            continue
        acct = getattr(dev, "accounting", None)
        size, allocated = _sizes(dev.fd) if getattr(dev, "fd", -1) >= 0 else (0, 0)
        out.append(
            BlockInfo(
                node_name=spec.drive_id or spec.id,
                filename=spec.file,
                read_only=spec.readonly,
                direct=spec.direct,
                size=size,
                allocated=allocated,
                iops=spec.iops or 0,
                qdev=spec.id,
                counters=dict(acct.counters) if acct is not None else {},
                idle_ns=acct.idle_ns() if acct is not None else None,
            )
        )
    for spec in unused:
        size, allocated = _path_sizes(spec.filename)
        out.append(
            BlockInfo(
                node_name=spec.node_name,
                filename=spec.filename,
                read_only=spec.read_only,
                direct=spec.direct,
                size=size,
                allocated=allocated,
                iops=spec.iops or 0,
            )
        )
    return out


def chardevs(m: Machine) -> list[ChardevInfo]:
    """Each chardev with QEMU's filename conventions; open when its front end is (the UART
    always; a virtio console once the guest driver has set it up)."""
    dm = m.devices
    consoles = {
        att.spec.chardev.id: att
        for att in dm.virtio
        if isinstance(att.spec, ConsolePlan) and att.spec.chardev is not None
    }
    out = []
    for cid, ch in dm.chardevs.items():
        plan = ch.plan
        if plan.backend == "socket":
            where = f"unix:{plan.path}" + (",server=on" if plan.server else "")
            filename = where if ch.out_fd is not None else f"disconnected:{where}"
        elif plan.backend == "pty":
            filename = f"pty:{getattr(ch, 'path', '')}"
        elif plan.backend == "file":
            filename = f"file:{plan.path}"
        else:
            filename = plan.backend
        if ch is dm.serial_chardev:
            front = True
        else:
            att = consoles.get(cid)
            front = att is not None and bool(att.transport.device.active)
        out.append(ChardevInfo(cid, filename, front))
    return out


def iothreads(m: Machine) -> list[IoThreadInfo]:
    return [IoThreadInfo(name, io.native_id) for name, io in m.iothreads.items()]
