"""``-device virtio-net-device|virtio-net-pci``: a NIC's device (keys on ``launcher.model.Net``)."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values

NETDEV = ["-netdev", "tap,id=n0,ifname=tap0"]


def test_defaults_and_every_property() -> None:
    man = manifest('[nets.n0]\nifname = "tap0"\n')
    assert values(man, "-device") == ["virtio-net-device,id=n0,netdev=n0"]
    full = manifest(
        '[nets.n0]\nifname = "tap0"\nmac = "52:54:00:12:34:56"\nmq = true\n'
        'iothread = "io0"\nqueue-size = 1024\n',
        top='iothreads = ["io0"]',
    )
    assert values(full, "-device") == [
        "virtio-net-device,id=n0,netdev=n0,mac=52:54:00:12:34:56,mq=on,iothread=io0,queue-size=1024"
    ]
    round_trip(man)
    round_trip(full)


def test_import() -> None:
    n = imported(*NETDEV, "-device", "virtio-net-device,netdev=n0,mac=52:54:00:00:00:09").nets[0]
    assert n.attached and n.mac == "52:54:00:00:00:09" and n.queue_size == 256


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ("mac=52-54-00-12-34-56", "Mac address is illegal"),
        ("queue-size=128", "should be a power of 2 between 256 and 4096, got 128"),
        ("vhost=on", "Invalid parameter 'vhost' for 'virtio-net-device'"),
    ],
)
def test_import_refuses(props: str, message: str) -> None:
    got, mark = rejected(*NETDEV, "-device", f"virtio-net-device,netdev=n0,{props}")
    assert message in got and mark == at(4, len("virtio-net-device,netdev=n0,") + 1)
