"""``-device virtio-balloon-*`` (keys on ``launcher.model.Balloon``)."""

from __future__ import annotations

from svargv import imported, manifest, rejected, round_trip, values


def test_both_ways() -> None:
    man = manifest("[balloon]\ndeflate-on-oom = true\nfree-page-reporting = true\n")
    assert values(man, "-device") == [
        "virtio-balloon-device,deflate-on-oom=on,free-page-reporting=on"
    ]
    round_trip(man)
    b = imported("-device", "virtio-balloon-device,deflate-on-oom=off").balloon
    assert b is not None and not b.deflate_on_oom


def test_import_refuses_a_second_one() -> None:
    got, _ = rejected("-device", "virtio-balloon-device", "-device", "virtio-balloon-device")
    assert "Only one balloon device" in got
