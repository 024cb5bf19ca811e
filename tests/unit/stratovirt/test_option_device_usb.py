"""``-device nec-usb-xhci``, ``usb-kbd`` and ``usb-tablet`` (``launcher.model_pci``)."""

from __future__ import annotations

from svargv import imported, manifest, rejected, round_trip, values

USB = '[usb.xhci]\naddr = "0x8"\np2 = 2\n[usb.keyboard]\n[usb.tablet]\nid = "tab"\n'


def test_both_ways() -> None:
    man = manifest(USB, q35=True)
    assert values(man, "-device") == [
        "nec-usb-xhci,id=xhci,bus=pcie.0,addr=0x8,p2=2",
        "usb-kbd,id=kbd",
        "usb-tablet,id=tab",
    ]
    round_trip(man)


def test_import_clamps_ports_as_stratovirt_does() -> None:
    from svargv import base

    from launcher.compile.stratovirt.importer import import_argv

    r = import_argv([*base(True), "-device", "nec-usb-xhci,id=x,bus=pcie.0,addr=0x8,p3=4"])
    assert r.manifest.usb.xhci is not None and r.manifest.usb.xhci.p3 == 4
    got, _ = rejected("-device", "usb-kbd,id=k", q35=True)
    assert "Can not find parent device" in got
    assert imported("-device", "nec-usb-xhci,id=x,bus=pcie.0,addr=0x8", "-device", "usb-tablet,id=t", q35=True).usb.tablet is not None  # fmt: skip
