"""``-object rng-random`` and ``-device virtio-rng-*`` (keys on ``launcher.model.Rng``)."""

from __future__ import annotations

import pytest
from svargv import imported, manifest, rejected, round_trip, values


def test_both_ways() -> None:
    man = manifest("[rngs.rng0]\nmax-bytes = 1024\nperiod = 1000\n")
    assert values(man, "-object") == ["rng-random,id=rng0,filename=/dev/urandom"]
    assert values(man, "-device") == [
        "virtio-rng-device,id=rng0,rng=rng0,max-bytes=1024,period=1000"
    ]
    round_trip(man)
    r = imported("-object", "rng-random,id=r,filename=/dev/random", "-device", "virtio-rng-device,rng=r").rngs[0]  # fmt: skip
    assert (r.id, r.file, r.max_bytes) == ("r", "/dev/random", None)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ("max-bytes=1024", "Argument 'period' is missing"),
        ("max-bytes=1,period=1000", "must be within [64, 1000000000]"),
    ],
)
def test_import_refuses(props: str, message: str) -> None:
    got, _ = rejected("-object", "rng-random,id=r,filename=/dev/urandom", "-device", f"virtio-rng-device,rng=r,{props}")  # fmt: skip
    assert message in got
