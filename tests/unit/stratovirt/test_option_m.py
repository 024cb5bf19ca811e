"""``-m``, ``-mem-path`` and ``-mem-prealloc`` (keys on ``launcher.model.Memory``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values

from launcher.compile.stratovirt.emit import emit_argv
from launcher.errors import InvalidInput


def test_default_size_writes_nothing() -> None:
    assert values(manifest(), "-m") == []


def test_size_path_prealloc() -> None:
    man = manifest('[memory]\nsize = "2G"\npath = "/dev/hugepages"\nprealloc = true\n')
    argv = emit_argv(man)
    assert values(man, "-m") == ["2G"] and values(man, "-mem-path") == ["/dev/hugepages"]
    assert "-mem-prealloc" in argv
    round_trip(man)


def test_import_plain_number_is_mib() -> None:
    assert imported("-m", "512").memory.size == 512 << 20
    assert imported("-mem-prealloc").memory.prealloc


@pytest.mark.parametrize("value", ["1.5G", "1T", "1K", "1MiB"])
def test_import_refuses(value: str) -> None:
    got, mark = rejected("-m", value)
    assert "invalid memory size" in got and mark == at(2, 1)


def test_size_stratovirt_cannot_spell() -> None:
    """A size that is not whole MiB has no -m spelling (validation refuses it first)."""
    man = manifest()
    odd = replace(man, memory=replace(man.memory, size=(256 << 20) + 4096))
    with pytest.raises(InvalidInput) as info:
        emit_argv(odd)
    assert info.value.issues[0].path == "memory.size"
