"""``-chardev stdio|pty|socket|file``, both ways (keys on ``launcher.model.Chardev``)."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values

from launcher.model import ChardevBackend


def test_socket_server() -> None:
    man = manifest(
        '[chardevs.c0]\nbackend = "socket"\npath = "/run/c0.sock"\nserver = true\nnowait = true\n'
        '[consoles.con0]\nchardev = "c0"\n'
    )
    assert values(man, "-chardev") == ["socket,id=c0,path=/run/c0.sock,server,nowait"]
    round_trip(man)


def test_import() -> None:
    (c,) = imported("-chardev", "file,id=log,path=/var/log/x").chardevs
    assert (c.id, c.backend, c.path, c.server) == ("log", ChardevBackend.FILE, "/var/log/x", False)


@pytest.mark.parametrize(
    ("value", "message", "col"),
    [
        ("socket,id=c,path=/s,server=on", "No parameter needed for server", 21),
        ("file,id=c,path=/f,nowait", "'nowait' is only allowed for a socket chardev", 19),
        ("socket,id=c", "'path' is missing for socket chardev", 1),
        ("tty,id=c", "Invalid parameter 'tty' for 'chardev'", 1),
    ],
)
def test_import_refuses(value: str, message: str, col: int) -> None:
    got, mark = rejected("-chardev", value)
    assert message in got and mark == at(2, col)
