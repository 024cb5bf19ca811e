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
from pathlib import Path

import pytest
from virtio_driver import HostCost
from virtio_fuzz import SEEDS, SLICE, DeviceEnv, check_cost, run_cases

from engine.virtio.balloon import Balloon
from engine.virtio.blk import Blk
from engine.virtio.chardev_io import FdBackend
from engine.virtio.console import Console
from engine.virtio.rng import Rng

KiB, MiB = 1 << 10, 1 << 20
GUEST = MiB


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
