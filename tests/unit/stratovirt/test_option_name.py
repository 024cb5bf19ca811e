"""``-name``: the VM name, under the one VM-name rule (``engine.names``)."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, values


def test_both_ways() -> None:
    assert values(manifest(), "-name") == ["vm"]
    assert imported("-name", "web-1").name == "web-1"
    assert imported().name == "stratovirt"  # StratoVirt's own default


@pytest.mark.parametrize("name", ["a/b", "../x", "vm\n", "\x1b[2J", "v" * 65])
def test_import_refuses_names_up_would_refuse(name: str) -> None:
    got, mark = rejected("-name", name)
    assert "is not a valid VM name" in got and mark == at(2)


def test_import_refuses_what_stratovirt_refuses() -> None:
    got, mark = rejected("-name", "v" * 256)
    assert "no more than 255" in got and mark == at(2)
