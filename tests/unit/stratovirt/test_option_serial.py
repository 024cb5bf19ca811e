"""``-serial``: the legacy serial port, written inline (``-serial chardev:ID`` cannot work in v2.2)."""

from __future__ import annotations

from svargv import at, imported, manifest, rejected, round_trip, values

from launcher.model import ChardevBackend


def test_shorthand_and_table() -> None:
    assert values(manifest(top='serial = "pty"'), "-serial") == ["pty"]
    sock = manifest('[serial]\nbackend = "socket"\npath = "/run/s.sock"\nserver = true\n')
    assert values(sock, "-serial") == ["socket,path=/run/s.sock,server"]
    round_trip(sock)


def test_import() -> None:
    s = imported("-serial", "stdio").serial
    assert s is not None and s.backend is ChardevBackend.STDIO and s.id == "serial_chardev"


def test_import_refuses() -> None:
    got, mark = rejected("-serial", "chardev:con0")
    assert 'Chardev "con0" not found or is in use' in got and mark == at(2)
    got, mark = rejected("-serial", "stdio,id=x")
    assert "-serial takes no id" in got and mark == at(2, 7)
