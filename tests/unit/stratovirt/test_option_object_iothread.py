"""``-object iothread,id=ID`` (``Manifest.iothreads``)."""

from __future__ import annotations

from svargv import imported, manifest, rejected, round_trip, values


def test_both_ways() -> None:
    man = manifest('[drives.d]\nfile = "/d"\niothread = "io0"\n', top='iothreads = ["io0"]')
    assert values(man, "-object") == ["iothread,id=io0"]
    round_trip(man)
    assert imported("-object", "iothread,id=a", "-object", "iothread,id=b").iothreads == ("a", "b")


def test_import_refuses() -> None:
    got, _ = rejected("-object", "iothread,id=a", "-object", "iothread,id=a")
    assert "Input id a repeat for iothread" in got
    nine = [x for i in range(9) for x in ("-object", f"iothread,id=t{i}")]
    got, _ = rejected(*nine)
    assert "Iothread number must >= 0 and <= 8" in got
