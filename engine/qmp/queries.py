"""Block, chardev and iothread queries answered from the running VM, in QEMU's QAPI shapes.

StratoVirt v2.2.0 answers ``query-block``, ``query-blockstats`` and ``query-named-block-nodes``
with ``[]`` and lists only pty chardevs; here every answer comes from ``VmControl`` (the real
drives, their files, the devices' own counters, the chardev back ends, the iothreads' threads),
shaped as QEMU 7.2 answers them (``BlockInfo``, ``BlockDeviceInfo``, ``BlockStats``,
``BlockDeviceStats``, ``ChardevInfo``, ``IOThreadInfo``; compared with a live QEMU in
``tests/kvm/test_qmp_engine.py``). Fields whose value the engine cannot know are left out
where QAPI makes them optional; mandatory ones are true statements about the engine (a raw
image has no backing file, nothing is merged, no latency histogram is configured).
"""

from __future__ import annotations

from typing import Any

from engine.qmp.control import BlockInfo
from engine.qmp.registry import Dispatcher, command

#: BlockDeviceStats counters the engine keeps (virtio-blk's own accounting, ``engine/virtio``)
COUNTERS = (
    "rd_bytes",
    "wr_bytes",
    "unmap_bytes",
    "rd_operations",
    "wr_operations",
    "flush_operations",
    "unmap_operations",
    "rd_total_time_ns",
    "wr_total_time_ns",
    "flush_total_time_ns",
    "unmap_total_time_ns",
    "wr_highest_offset",
    "failed_rd_operations",
    "failed_wr_operations",
    "failed_flush_operations",
    "failed_unmap_operations",
    "invalid_rd_operations",
    "invalid_wr_operations",
    "invalid_flush_operations",
    "invalid_unmap_operations",
)


def device_info(b: BlockInfo) -> dict[str, Any]:
    """QAPI ``BlockDeviceInfo`` of one node (a raw file: the format node is the file)."""
    return {
        "file": b.filename,
        "node-name": b.node_name,
        "ro": b.read_only,
        "drv": "raw",
        "backing_file_depth": 0,
        "encrypted": False,
        "detect_zeroes": "off",
        "bps": 0,
        "bps_rd": 0,
        "bps_wr": 0,
        "iops": b.iops,
        "iops_rd": 0,
        "iops_wr": 0,
        "image": {
            "filename": b.filename,
            "format": "raw",
            "virtual-size": b.size,
            "actual-size": b.allocated,
            "dirty-flag": False,
        },
        # virtio-blk offers VIRTIO_BLK_F_FLUSH: the guest sees a write-back cache and flushes it
        "cache": {"writeback": True, "direct": b.direct, "no-flush": False},
        "write_threshold": 0,
    }


def device_stats(b: BlockInfo) -> dict[str, Any]:
    """QAPI ``BlockDeviceStats``: the device's counters; nothing is merged, no timed stats."""
    stats: dict[str, Any] = {k: int(b.counters.get(k, 0)) for k in COUNTERS}
    stats.update(
        rd_merged=0,
        wr_merged=0,
        unmap_merged=0,
        account_invalid=True,
        account_failed=True,
        timed_stats=[],
    )
    if b.idle_ns is not None:
        stats["idle_time_ns"] = b.idle_ns
    return stats


@command("query-block")
def _query_block(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "device": b.node_name,
            "qdev": b.qdev,
            "type": "unknown",
            "removable": False,
            "locked": False,
            "inserted": device_info(b),
        }
        for b in d.control.query_block()
        if b.qdev is not None
    ]


@command("query-named-block-nodes")
def _query_nodes(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [device_info(b) for b in d.control.query_block()]


@command("query-blockstats")
def _query_blockstats(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = a.get("query-nodes", False)
    out = []
    for b in d.control.query_block():
        if b.qdev is None and not nodes:
            continue
        entry: dict[str, Any] = {"node-name": b.node_name, "stats": device_stats(b)}
        if not nodes:
            entry = {"device": b.node_name, "qdev": b.qdev, **entry}
        out.append(entry)
    return out


@command("query-chardev")
def _query_chardev(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"label": c.label, "filename": c.filename, "frontend-open": c.frontend_open}
        for c in d.control.query_chardevs()
    ]


@command("query-iothreads")
def _query_iothreads(d: Dispatcher, a: dict[str, Any]) -> list[dict[str, Any]]:
    # The engine's iothreads sleep in epoll: no adaptive polling, no batching (all zero).
    return [
        {
            "id": t.id,
            "thread-id": t.thread_id,
            "poll-max-ns": 0,
            "poll-grow": 0,
            "poll-shrink": 0,
            "aio-max-batch": 0,
        }
        for t in d.control.query_iothreads()
    ]
