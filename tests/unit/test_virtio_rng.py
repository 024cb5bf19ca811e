"""virtio-rng: entropy reaches the guest, and max-bytes/period bounds the rate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from virtio_driver import Allocator, Driver

from engine.eventloop import EventLoop
from engine.machine.memory import GuestMemory
from engine.virtio.mmio import MmioTransport
from engine.virtio.rng import Rng
from launcher.errors import HostError

MiB = 1 << 20


def make(loop=None, **kw):
    mem = GuestMemory.anonymous([(0, 8 * MiB)])
    dev = Rng("rng0", loop=loop, **kw)
    t = MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    drv.start()
    return mem, dev, t, drv


def test_entropy_comes_from_the_named_file(tmp_path: Path) -> None:
    src = tmp_path / "pool"
    src.write_bytes(bytes(range(256)) * 16)
    mem, dev, t, drv = make(filename=str(src))
    q = drv.queues[0]
    q.add([], [64])
    q.add([], [32, 32])
    q.kick()
    a, b = q.collect()
    assert (a.length, a.data) == (64, bytes(range(64)))
    assert (b.length, b.data) == (64, bytes(range(64, 128)))
    assert dev.stats.bytes_out == 128
    t.close()
    mem.close()


def test_urandom_fills_buffers() -> None:
    mem, _dev, t, drv = make()
    q = drv.queues[0]
    q.add([], [4096])
    q.kick()
    (c,) = q.collect()
    assert c.length == 4096 and c.data != b"\xee" * 4096 and len(set(c.data)) > 200
    t.close()
    mem.close()


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="cannot open entropy source"):
        Rng("rng0", str(tmp_path / "none"))


def test_rate_limit_bounds_bytes_per_period() -> None:
    loop = EventLoop("rng-test")
    th = threading.Thread(target=loop.run, daemon=True)
    th.start()
    mem, dev, t, drv = make(loop=loop, max_bytes=1000, period_ms=100)  # 10,000 B/s
    try:
        time.sleep(0.05)
        q = drv.queues[0]
        for _ in range(60):
            q.add([], [100])
        t0 = time.monotonic()
        loop.call_soon_threadsafe(lambda: t.notify(0))
        got = 0
        done = []
        while got < 6000 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
            for c in q.collect():
                got += c.length
                done.append(c)
        elapsed = time.monotonic() - t0
        assert got == 6000 and len(done) == 60
        # 6000 bytes at 10,000 B/s with a 1000-byte burst: at least 0.5 s.
        assert elapsed >= 0.45, elapsed
        assert dev.stats.throttled_s > 0.2
    finally:
        loop.call_soon_threadsafe(t.close)
        loop.stop()
        th.join(2)
        mem.close()
