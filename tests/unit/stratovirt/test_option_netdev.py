"""``-netdev tap|vhost-user``: a NIC's backend, both ways (keys on ``launcher.model.Net``)."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values

from launcher.model import NetType


def test_tap_by_name() -> None:
    man = manifest('[nets.n0]\nifname = "tap0"\n')
    assert values(man, "-netdev") == ["tap,id=n0,ifname=tap0"]
    round_trip(man)


def test_fds_spelling_follows_the_count() -> None:
    one = manifest("[nets.n0]\nfds = [3]\nvhost = true\nvhostfds = [4]\n")
    assert values(one, "-netdev") == ["tap,id=n0,fd=3,vhost=on,vhostfd=4"]
    two = manifest("[nets.n0]\nfds = [3, 5]\nqueues = 2\n")
    assert values(two, "-netdev") == ["tap,id=n0,fds=3:5,queues=2"]
    round_trip(one)
    round_trip(two)


def test_import() -> None:
    n = imported("-netdev", "tap,id=n0,fds=3:5,queues=2").nets[0]
    assert (n.type, n.fds, n.queues, n.attached) == (NetType.TAP, (3, 5), 2, False)


@pytest.mark.parametrize(
    ("value", "message", "col"),
    [
        ("type=tap,id=n0", "Invalid parameter 'type' for '-netdev'", 1),
        ("tap,id=n0", "Tap device is missing", 1),
        ("tap,id=n0,ifname=t,vhostfd=3", "Argument 'vhostfd' is not needed", 20),
        ("tap,id=n0,ifname=t,queues=17", "should be >= 1 and <= 16, got 17", 20),
        ("tap,id=n0,fd=x", "invalid value for 'fd'", 11),
    ],
)
def test_import_refuses(value: str, message: str, col: int) -> None:
    got, mark = rejected("-netdev", value)
    assert message in got and mark == at(2, col)
