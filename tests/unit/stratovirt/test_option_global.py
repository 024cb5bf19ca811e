"""``-global pcie-root-port.fast-unplug=0|1`` (``Manifest.fast_unplug``, key global.pcie-root-port)."""

from __future__ import annotations

from svargv import at, imported, manifest, rejected, round_trip, values


def test_both_ways() -> None:
    man = manifest("[global.pcie-root-port]\nfast-unplug = true\n", q35=True)
    assert values(man, "-global") == ["pcie-root-port.fast-unplug=1"]
    round_trip(man)
    assert imported("-global", "pcie-root-port.fast-unplug=0", q35=True).fast_unplug is False


def test_import_refuses() -> None:
    got, mark = rejected("-global", "pcie-root-port.fast-unplug=on")
    assert "must be 0 or 1" in got and mark == at(2, 1)
