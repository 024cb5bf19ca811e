"""``-device pcie-root-port`` (keys on ``launcher.model.RootPort``)."""

from __future__ import annotations

from svargv import imported, manifest, rejected, round_trip, values

PORT = '[root-ports."pcie.1"]\nport = 16\naddr = "0x5"\nchassis = 1\n'


def test_both_ways() -> None:
    man = manifest(PORT, q35=True)
    assert values(man, "-device") == [
        "pcie-root-port,id=pcie.1,port=0x10,bus=pcie.0,addr=0x5,chassis=1"
    ]
    round_trip(man)
    rp = imported("-device", "pcie-root-port,id=rp,port=0x8,bus=pcie.0,addr=0x6", q35=True).root_ports[0]  # fmt: skip
    assert (rp.id, rp.port, rp.pci.slot, rp.chassis) == ("rp", 8, 6, None)


def test_import_refuses() -> None:
    got, _ = rejected("-device", "pcie-root-port,id=rp,port=1,bus=pcie.0,addr=0x6,chassis=256", q35=True)  # fmt: skip
    assert "does not fit in u8" in got
    got, _ = rejected("-device", "pcie-root-port,id=rp,port=1,bus=pcie.9,addr=0x6", q35=True)
    assert "Parent bus :pcie.9 not found" in got
