"""``-incoming file:PATH|unix:PATH|tcp:IP:PORT``."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values


@pytest.mark.parametrize("uri", ["file:/snap/vm", "unix:/run/mig.sock", "tcp:192.0.2.1:4444"])
def test_both_ways(uri: str) -> None:
    man = manifest(top=f'incoming = "{uri}"')
    assert values(man, "-incoming") == [uri]
    round_trip(man)
    assert imported("-incoming", uri).incoming == uri


@pytest.mark.parametrize("uri", ["tcp:host:4444", "tcp:192.0.2.1:99999", "http:/x", "file:"])
def test_import_refuses(uri: str) -> None:
    got, mark = rejected("-incoming", uri)
    assert got == "Invalid incoming uri" and mark == at(2, 1)
