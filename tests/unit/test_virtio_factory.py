"""The factory builds each device kind from real plan dataclasses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.eventloop import EventLoop
from engine.machine.memory import GuestMemory
from engine.plan import (
    BalloonPlan,
    BlkPlan,
    ChardevPlan,
    ConsolePlan,
    RngPlan,
    SlotPlan,
    VsockPlan,
)
from engine.virtio.balloon import Balloon
from engine.virtio.blk import Blk
from engine.virtio.blk_spec import VIRTIO_BLK_F_RO
from engine.virtio.console import Console
from engine.virtio.factory import Placeholder, create_device
from engine.virtio.mmio import MmioTransport
from engine.virtio.rng import Rng
from launcher.errors import HostError

BASE, IRQ = 0xD000_0000, 5


def test_blk_from_plan(tmp_path: Path) -> None:
    f = tmp_path / "d.raw"
    f.write_bytes(bytes(1 << 20))
    loop = EventLoop("t")
    spec = BlkPlan(
        "d0",
        BASE,
        IRQ,
        file=str(f),
        readonly=True,
        direct=False,
        serial="S1",
        iops=100,
        num_queues=2,
    )
    dev = create_device(spec, loops={None: loop})
    try:
        assert isinstance(dev, Blk) and dev.loop is loop and dev.num_queues == 2
        assert (
            dev.avail_features & 1 << VIRTIO_BLK_F_RO
            and dev.serial == b"S1"
            and dev.bucket is not None
        )
    finally:
        dev.close()
        loop.close()


def test_other_kinds_from_plan(tmp_path: Path) -> None:
    mem = GuestMemory.anonymous([(0, 1 << 24)])
    rng = create_device(RngPlan("r0", BASE, IRQ, max_bytes=1000, period_ms=500))
    assert isinstance(rng, Rng) and rng.bucket is not None and rng.bucket.rate == 2000
    bal = create_device(BalloonPlan("b0", BASE, IRQ, free_page_reporting=True), mem=mem)
    assert isinstance(bal, Balloon) and bal.num_queues == 4 and bal.query() == {"actual": 1 << 24}
    con = create_device(
        ConsolePlan("c0", BASE, IRQ, chardev=ChardevPlan("c0", "file", path=str(tmp_path / "o")))
    )
    assert isinstance(con, Console) and con.owns_backend
    slot = create_device(SlotPlan("s0", BASE, IRQ))
    assert isinstance(slot, Placeholder)
    t = MmioTransport(slot, mem)
    assert t.read(0x8, 4) == 0 and t.num_queues == 0
    for d in (rng, bal, con):
        d.close()
    mem.close()


@pytest.mark.skipif(os.path.exists("/dev/vhost-vsock"), reason="host has vhost-vsock")
def test_vsock_without_vhost_is_a_host_error() -> None:
    with pytest.raises(HostError, match="vhost-vsock"):
        create_device(VsockPlan("v0", BASE, IRQ, guest_cid=3))
