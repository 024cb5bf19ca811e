"""``-device vfio-pci`` (keys on ``launcher.model.Vfio``)."""

from __future__ import annotations

from svargv import imported, manifest, rejected, round_trip, values


def test_both_ways() -> None:
    man = manifest('[vfio.nic]\nhost = "0000:1a:00.3"\naddr = "0x6"\n', q35=True)
    assert values(man, "-device") == ["vfio-pci,id=nic,host=0000:1a:00.3,bus=pcie.0,addr=0x6"]
    round_trip(man)
    sysfs = manifest('[vfio.nic]\nsysfsdev = "/sys/bus/pci/devices/0000:1a:00.3"\naddr = "0x6"\n', q35=True)  # fmt: skip
    assert values(sysfs, "-device")[0].startswith("vfio-pci,id=nic,sysfsdev=/sys/bus/pci/")
    round_trip(sysfs)
    v = imported("-device", "vfio-pci,id=v,host=0000:00:01.0,bus=pcie.0,addr=0x7", q35=True).vfio[0]
    assert (v.host, v.pci.slot) == ("0000:00:01.0", 7)


def test_import_refuses_neither_host_nor_sysfsdev() -> None:
    got, _ = rejected("-device", "vfio-pci,id=v,bus=pcie.0,addr=0x7", q35=True)
    assert "needs exactly one of host or sysfsdev" in got
