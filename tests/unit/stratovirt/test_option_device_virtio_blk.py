"""``-device virtio-blk-device|virtio-blk-pci``: a drive's device, both ways.

Optional properties come from keys declared on ``launcher.model.Drive`` with
``sv=("virtio-blk", ...)``; their limits are ``engine.device_rules``' (the same ones QMP
hot-plug applies). ``id``, ``drive`` and the PCI placement are the emitter's own.
"""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values

from engine import device_rules as rules

DRIVE = ["-drive", "id=d,file=/img/d"]


def test_defaults() -> None:
    man = manifest('[drives.d]\nfile = "/img/d"\n')
    assert values(man, "-device") == ["virtio-blk-device,id=d,drive=d"]
    assert man.drives[0].queue_size == rules.DEFAULT_QUEUE_SIZE
    round_trip(man)


def test_every_property() -> None:
    man = manifest(
        '[drives.d]\nfile = "/img/d"\nbootindex = 1\nserial = "SN1"\niothread = "io0"\n'
        'queues = 2\nqueue-size = 128\ndevice-id = "blk0"\n',
        top='iothreads = ["io0"]',
    )
    assert values(man, "-device") == [
        "virtio-blk-device,id=blk0,drive=d,bootindex=1,serial=SN1,iothread=io0,num-queues=2,"
        "queue-size=128"
    ]
    round_trip(man)


def test_pci_placement() -> None:
    man = manifest('[drives.d]\nfile = "/img/d"\naddr = "0x3"\n', q35=True)
    assert values(man, "-device") == ["virtio-blk-pci,id=d,drive=d,bus=pcie.0,addr=0x3"]
    round_trip(man)


def test_import() -> None:
    d = imported(*DRIVE, "-device", "virtio-blk-device,id=d,drive=d,num-queues=4,queue-size=64").drives[0]  # fmt: skip
    assert d.attached and (d.queues, d.queue_size) == (4, 64)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ("queue-size=2048", "should be a power of 2 between 4 and 1024, got 2048"),
        ("queue-size=100", "should be a power of 2 between 4 and 1024, got 100"),
        ("num-queues=33", "should be >= 1 and <= 32, got 33"),
        ("bootindex=300", "does not fit in u8"),
        ("serial=123456789012345678901", "virtio-blk allows 20"),
        ("mac=52:54:00:12:34:56", "Invalid parameter 'mac' for 'virtio-blk-device'"),
    ],
)
def test_import_refuses(props: str, message: str) -> None:
    got, mark = rejected(*DRIVE, "-device", f"virtio-blk-device,id=d,drive=d,{props}")
    assert message in got and mark == at(4, len("virtio-blk-device,id=d,drive=d,") + 1)


def test_the_limits_are_the_engines() -> None:
    """One declaration: the manifest, the importer and hot-plug share these ranges."""
    from launcher.keys import specs
    from launcher.model import Drive

    limits = {s.name: s.decl.limits for s in specs(Drive)}
    assert limits["queue-size"] is rules.BLK_QUEUE_SIZE and limits["queues"] is rules.BLK_QUEUES
