"""The virtio fuzzers' harness: one device per 1 MiB guest, random hostile chains, and the
per-case bound on what a request may cost the host (docs/virtio.md). Used by
tests/unit/test_virtio_device_fuzz.py (Python-served devices) and
tests/root/test_virtio_net_fuzz.py (virtio-net on a real tap).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from virtio_driver import Allocator, Driver, HostCost

from engine.machine.memory import GuestMemory
from engine.virtio import mmio as M
from engine.virtio.balloon import Balloon
from engine.virtio.device import VirtioDevice

KiB, MiB = 1 << 10, 1 << 20
GUEST = MiB
DATA = 512 * KiB  # buffers land in [DATA, GUEST); rings and tables below
SEEDS = range(3_000_000, 3_040_000)
SLICE = 3_000
CASE_MIB = 8
CASE_CPU_S = 0.25


class DeviceEnv:
    """One device on its own 1 MiB guest, renegotiated on zeroed rings before every case."""

    def __init__(self, dev: VirtioDevice) -> None:
        self.dev = dev
        self.mem = GuestMemory.anonymous([(0, GUEST)])
        self.t = M.MmioTransport(dev, self.mem)
        self.drv = Driver(self.t, self.mem, Allocator(0x1000, DATA))
        self.mark = self.drv.alloc.mark()

    def fresh(self) -> None:
        self.drv.alloc.release(self.mark)
        self.mem.fill(0, DATA, 0)
        self.drv.start()

    def close(self) -> None:
        self.t.close()
        self.mem.close()


def guest_data(rng: random.Random, mem: GuestMemory) -> None:
    """Request contents in the data area: blk headers, frame numbers, stats, noise."""
    kind = rng.randrange(4)
    if kind == 0:  # a blk header: any type, a sector near the start or the end of the disk
        rtype = rng.choice([0, 1, 4, 8, 11, 13, 99])
        mem.write(DATA, struct.pack("<IIQ", rtype, 0, rng.choice([0, 8, 2047, 2048, 1 << 40])))
    elif kind == 1:  # frame numbers of data-area pages (never the rings'), or junk
        pfns = [rng.choice([DATA // 4096 + rng.randrange(128), rng.randrange(1 << 32)])]
        mem.write(DATA, struct.pack("<I", pfns[0]) * 1024)
    elif kind == 2:
        mem.write(DATA, struct.pack("<HQ", rng.randrange(12), rng.randrange(1 << 64)) * 400)
    else:
        mem.write(DATA, rng.randbytes(4096))


def random_chain(rng: random.Random) -> list[tuple[int, int, int]]:
    count = rng.choice([1, 2, 3, 8, 64, 256, 1024])
    length = rng.choice([0, 1, 16, 512, 4096, 65536, 256 * KiB, 512 * KiB])
    alias = rng.random() < 0.7  # all buffers name the same pages
    bufs = []
    writable_from = rng.randrange(count + 1)
    for k in range(count):
        n = length if alias else rng.choice([0, 1, 16, 4096, 65536])
        if rng.random() < 0.02:
            addr = rng.choice([GUEST, GUEST - 8, 1 << 40, (1 << 64) - 8])  # outside RAM
        else:
            addr = DATA if alias else DATA + rng.randrange(GUEST - DATA - n + 1)
        bufs.append((addr, n, 2 if k >= writable_from else 0))
    if rng.random() < 0.05:  # a readable buffer after a writable one
        bufs.append((DATA, 16, 0))
    return bufs


def run_cases(
    envs: list[DeviceEnv],
    seeds: range,
    check: Callable[[HostCost, int], None],
    before_kick: Callable[[DeviceEnv, int], None] | None = None,
) -> None:
    """One case per seed: a device, a queue, a random chain, one kick. ``before_kick(env, q)``
    prepares what the device will find outside the guest (a frame waiting on a tap)."""
    for seed in seeds:
        rng = random.Random(seed)
        env = rng.choice(envs)
        env.fresh()
        guest_data(rng, env.mem)
        qi = rng.randrange(len(env.drv.queues))
        q = env.drv.queues[qi]
        q.post_table(random_chain(rng))
        if before_kick is not None:
            before_kick(env, qi)
        with HostCost(trace=False) as cost:
            q.kick()
            if isinstance(env.dev, Balloon):
                env.dev.request_stats()  # hands a held stats buffer back
        check(cost, seed)


def check_cost(cost: HostCost, seed: int) -> None:
    assert cost.peak_mib < CASE_MIB, f"seed {seed}: host RSS grew {cost.peak_mib:.1f} MiB"
    assert cost.cpu_s < CASE_CPU_S, f"seed {seed}: {cost.cpu_s:.3f} s of CPU for one request"
