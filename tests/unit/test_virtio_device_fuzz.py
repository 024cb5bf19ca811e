"""Seeded fuzzing of every Python-served device with hostile chains: what one request costs.

Each case posts one random chain to one queue of one device (console, rng, balloon with free
page reporting, read-only blk) on a 1 MiB guest: up to 1024 buffers, often the same guest pages
named again and again (aliasing), sometimes outside RAM, any direction. The host's peak RSS
growth and the CPU time of the case must stay within what docs/virtio.md promises per request
(``CASE_MIB``, ``CASE_CPU_S``), whatever the chain. Each case is reproducible from its seed.

The normal suite, CI included, runs ``SLICE`` cases; ``SVLAUNCH_LONG=1`` runs ``LONG`` more.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from virtio_driver import Allocator, Driver, HostCost

from engine.machine.memory import GuestMemory
from engine.virtio import mmio as M
from engine.virtio.balloon import Balloon
from engine.virtio.blk import Blk
from engine.virtio.chardev_io import FdBackend
from engine.virtio.console import Console
from engine.virtio.device import VirtioDevice
from engine.virtio.rng import Rng

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


@pytest.fixture
def envs(tmp_path: Path):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(GUEST)  # sparse: reads cost the kernel a copy of zeros
    a, b = socket.socketpair()
    made = [
        DeviceEnv(Console("console0", FdBackend(a))),
        DeviceEnv(Rng("rng0")),
        DeviceEnv(Balloon("balloon0", free_page_reporting=True)),
        DeviceEnv(Blk("blk0", str(disk), readonly=True)),
    ]
    yield made
    for env in made:
        env.close()
    a.close()
    b.close()


def run_cases(envs: list[DeviceEnv], seeds: range, check: Callable[[HostCost, int], None]) -> None:
    for seed in seeds:
        rng = random.Random(seed)
        env = rng.choice(envs)
        env.fresh()
        guest_data(rng, env.mem)
        q = env.drv.queues[rng.randrange(len(env.drv.queues))]
        q.post_table(random_chain(rng))
        with HostCost(trace=False) as cost:
            q.kick()
            if isinstance(env.dev, Balloon):
                env.dev.request_stats()  # hands a held stats buffer back
        check(cost, seed)


def check_cost(cost: HostCost, seed: int) -> None:
    assert cost.peak_mib < CASE_MIB, f"seed {seed}: host RSS grew {cost.peak_mib:.1f} MiB"
    assert cost.cpu_s < CASE_CPU_S, f"seed {seed}: {cost.cpu_s:.3f} s of CPU for one request"


def test_fuzz_devices_slice(envs) -> None:
    run_cases(envs, SEEDS[:SLICE], check_cost)


@pytest.mark.long
def test_fuzz_devices_long(envs) -> None:
    run_cases(envs, SEEDS[SLICE:], check_cost)


def test_the_fuzzer_reaches_every_device_and_catches_a_costly_one(envs) -> None:
    """The cases spread over all four devices, and the cost check fails a device that copies a
    whole aliased chain (what main's console did)."""
    seen = {type(random.Random(s).choice(envs).dev).__name__ for s in SEEDS[:200]}
    assert seen == {"Console", "Rng", "Balloon", "Blk"}
    with HostCost(trace=False) as cost:
        junk = bytes(range(256)) * (64 * 1024)  # 16 MiB, as an unbounded copy would make
        del junk
    with pytest.raises(AssertionError, match="host RSS grew"):
        check_cost(cost, -1)
