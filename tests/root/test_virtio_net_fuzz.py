"""Seeded fuzzing of virtio-net on a real tap in a namespace of the test's own: hostile chains on
the RX, TX and control queues (two queue pairs), each case bounded in host RSS and CPU time like
the other devices' (tests/support/virtio_fuzz.py, docs/virtio.md). Before an RX case the
namespace sends the guest a datagram of a random size (up to 9000 bytes, fragmented on the wire),
so RX chains meet real frames: longer than the chain, aliased, outside RAM.
"""

from __future__ import annotations

import itertools
import os
import socket

import pytest
from nettest import address_tap, close_in, drain, netns, open_in, socket_in
from virtio_fuzz import SEEDS, SLICE, DeviceEnv, check_cost, run_cases

from engine.virtio.net import Net

pytestmark = pytest.mark.root
NET_SEEDS = range(SEEDS.stop, SEEDS.stop + 20_000)
NET_SLICE = SLICE // 3


@pytest.fixture
def net_env():
    with netns(f"svlf{os.getpid()}") as ns:
        name = f"svlf{os.getpid()}"[:15]
        tap = open_in(ns, name, 2)
        address_tap(ns, name, "169.254.79.1", "169.254.79.2", bytes.fromhex("525400aabbce"))
        drain(tap)
        env = DeviceEnv(Net("net0", tap, mac="52:54:00:aa:bb:ce", queue_pairs=2))
        src = socket_in(ns, socket.SOCK_DGRAM)
        try:
            yield env, src
        finally:
            src.close()
            close_in(ns, env.t)
            env.mem.close()


def cases(net_env, seeds: range) -> None:
    env, src = net_env
    sizes = itertools.cycle([1, 64, 1400, 9000])

    def feed(env: DeviceEnv, queue: int) -> None:
        if queue in (0, 2):  # an RX queue: a frame waits on the tap
            src.sendto(os.urandom(next(sizes)), ("169.254.79.2", 9))

    run_cases([env], seeds, check_cost, before_kick=feed)
    assert env.dev.stats.requests > 0


def test_fuzz_net_slice(net_env) -> None:
    cases(net_env, NET_SEEDS[:NET_SLICE])
    env, _ = net_env
    assert env.dev.stats.bytes_out > 0 and env.dev.stats.errors > 0


@pytest.mark.long
def test_fuzz_net_long(net_env) -> None:
    cases(net_env, NET_SEEDS[NET_SLICE:])
