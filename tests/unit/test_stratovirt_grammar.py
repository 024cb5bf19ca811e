"""The shared grammar: value types both ways, property lists, the tokenizer, emission's guards."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.compile.stratovirt.emit import emit_argv
from launcher.compile.stratovirt.ozone import emit_ozone
from launcher.compile.stratovirt.props import (
    parse_props,
    read_bool,
    read_hexdec,
    read_intlist,
    read_pci_addr,
    read_size,
    read_uint,
    write_intlist,
    write_size,
)
from launcher.compile.stratovirt.tokens import STRATOVIRT_OPTIONS, tokenize
from launcher.errors import InvalidInput
from launcher.model import Boot, Drive, Manifest, MemoryZone, NumaPolicy, Ozone

MIB, GIB = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256", 256 * MIB),
        ("256M", 256 * MIB),
        ("256m", 256 * MIB),
        ("2G", 2 * GIB),
        ("2g", 2 * GIB),
    ],
)
def test_sizes_read(text: str, size: int) -> None:
    assert read_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "G", "6Gg", "G6", "M6M", "1K", "1T", "1.5G", "1MiB", "0x10", " 1G"]
)
def test_sizes_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        read_size(text)


@given(st.integers(1, 1 << 20))
def test_size_spelling_round_trips(mib: int) -> None:
    assert read_size(write_size(mib * MIB)) == mib * MIB


def test_size_that_is_not_whole_mib_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        write_size(MIB + 4096)


def test_bools_are_exact() -> None:
    assert [read_bool(t) for t in ("on", "true", "yes", "off", "false", "no")] == [True] * 3 + [
        False
    ] * 3
    for bad in ("1", "ON", "True", ""):
        with pytest.raises(ValueError):
            read_bool(bad)


def test_integers_and_hexdec() -> None:
    assert read_uint("+7") == 7 and read_hexdec("0x1e") == 30 and read_hexdec("10") == 10
    for bad in ("0x1", "-1", " 1", "1_0", "256"):
        with pytest.raises(ValueError):
            read_uint(bad, 8)


def test_pci_addresses() -> None:
    assert read_pci_addr("0x3") == (3, 0) and read_pci_addr("10") == (10, 0)
    assert read_pci_addr("0x1e.7") == (30, 7) and read_pci_addr("0x3.0x1") == (3, 1)
    for bad in ("0x20", "3.8", ".0x5", "1.2.3", "x"):
        with pytest.raises(ValueError):
            read_pci_addr(bad)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=12))
def test_intlist_round_trips_in_order(values: list[int]) -> None:
    assert read_intlist(write_intlist(tuple(values))) == tuple(values)


def test_intlist_syntax() -> None:
    assert read_intlist("[0-1:4-5]") == (0, 1, 4, 5)
    for bad in ("2-2", "3-1", "0::1", "a"):
        with pytest.raises(ValueError):
            read_intlist(bad)


def test_property_list_rules() -> None:
    p = parse_props("virtio-blk-device,id=a,drive=b=c", 3, "blk", {"id", "drive"})
    assert p.positional == "virtio-blk-device" and p.items == {"id": "a", "drive": "b=c"}
    for text in (",id=a", "id=a,", "x,id=", "x,=a", "x,,id=a", "x,id=a,id=b", "x,ID=a"):
        with pytest.raises(InvalidInput):
            parse_props(text, 3, "blk", {"id", "drive"})


def test_tokenizer_multi_values_and_dashdash() -> None:
    t = tokenize(["/bin/sv", "-device", "a", "b", "-D", "--", "-junk"], STRATOVIRT_OPTIONS)
    assert t.program == "/bin/sv" and [v.text for v in t.first("-device").values] == ["a", "b"]
    assert t.first("-D").values == () and t.extra == ("-junk",) and t.first("-device").index == 2


BASE = Manifest(name="vm", boot=Boot("/k"), drives=(Drive("root", "/r"),), qmp=("/q",))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(memory=dataclasses.replace(BASE.memory, size=256 * MIB + 1)), "not a whole number of MiB"),
        (dict(qmp=("/a", "/b")), "one -qmp"),
        (dict(qmp=("/a:b",)), "contains ':'"),
        (dict(drives=(Drive("root", "/r,x"),)), "cannot contain ','"),
        (dict(name="-vm"), "starts with '-'"),
        (dict(boot=Boot("/k", cmdline="-x")), "starts with '-'"),
        (dict(memory=dataclasses.replace(BASE.memory, zones=(MemoryZone("z", MIB, (), NumaPolicy.BIND),))), "host-nodes"),
    ],
)  # fmt: skip
def test_emission_refuses_what_stratovirt_cannot_spell(change: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        emit_argv(dataclasses.replace(BASE, **change))
    assert message in info.value.issues[0].message


def test_ozone_outputs_must_be_in_the_jail_and_basenames_unique() -> None:
    oz = dataclasses.replace(BASE, ozone=Ozone("/usr/bin/stratovirt", 1, 1))
    with pytest.raises(InvalidInput) as info:
        emit_ozone(oz)
    assert "outside the ozone jail /srv/ozone/stratovirt/vm" in info.value.issues[0].message
    ok = dataclasses.replace(oz, qmp=("/srv/ozone/stratovirt/vm/q",))
    assert emit_ozone(ok)[-1] == "unix:./q,server,nowait"
    clash = dataclasses.replace(ok, drives=(Drive("root", "/a/k"),), boot=Boot("/k"))
    with pytest.raises(InvalidInput) as info:
        emit_ozone(clash)
    assert "both be ./k" in info.value.issues[0].message
