"""``-device vhost-vsock-device|vhost-vsock-pci`` (keys on ``launcher.model.Vsock``)."""

from __future__ import annotations

from svargv import at, imported, manifest, rejected, round_trip, values


def test_both_ways() -> None:
    man = manifest("[vsock]\nguest-cid = 3\nvhostfd = 9\n")
    assert values(man, "-device") == ["vhost-vsock-device,id=vsock0,guest-cid=3,vhostfd=9"]
    round_trip(man)
    v = imported("-device", "vhost-vsock-device,id=v0,guest-cid=42").vsock
    assert v is not None and (v.id, v.guest_cid, v.vhostfd) == ("v0", 42, None)


def test_import_refuses() -> None:
    got, mark = rejected("-device", "vhost-vsock-device,id=v,guest-cid=2")
    assert "should be >= 3 and <= 4294967294" in got and mark == at(2, 25)
    got, _ = rejected("-device", "vhost-vsock-device,id=v")
    assert "'guest-cid' is missing" in got
