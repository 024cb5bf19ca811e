"""``-device virtio-serial-*`` and ``-device virtconsole``."""

from __future__ import annotations

from svargv import at, imported, manifest, rejected, round_trip, values

CONSOLE = '[chardevs.c0]\nbackend = "pty"\n[consoles.con0]\nchardev = "c0"\n'


def test_implied_by_a_console() -> None:
    man = manifest(CONSOLE)
    assert values(man, "-device") == ["virtio-serial-device", "virtconsole,id=con0,chardev=c0"]
    round_trip(man)


def test_explicit_on_q35() -> None:
    man = manifest(CONSOLE + '[virtio-serial]\nid = "vs"\naddr = "0x4"\n', q35=True)
    assert values(man, "-device") == [
        "virtio-serial-pci,id=vs,bus=pcie.0,addr=0x4",
        "virtconsole,id=con0,chardev=c0",
    ]
    round_trip(man)


def test_import() -> None:
    m = imported("-chardev", "pty,id=c0", "-device", "virtio-serial-device", "-device", "virtconsole,id=con0,chardev=c0")  # fmt: skip
    assert [(c.id, c.chardev) for c in m.consoles] == [("con0", "c0")]
    got, mark = rejected("-device", "virtconsole,id=c0,chardev=x")
    assert "No virtio-serial-bus specified" in got and mark == at(2, 1)
