"""``-machine`` (and ``-accel``), both ways (keys on ``launcher.model.Machine``)."""

from __future__ import annotations

import pytest
from svargv import MICROVM_ARGV, at, imported, manifest, round_trip, values

from launcher.compile.stratovirt.importer import import_argv
from launcher.errors import InvalidInput
from launcher.model import MachineType


def test_defaults_and_switches() -> None:
    assert values(manifest(), "-machine") == ["microvm"]
    man = manifest(
        '[machine]\ndump-guest-core = false\nmem-share = true\naccel = "kvm"\nusb = false\n'
    )
    assert values(man, "-machine") == ["microvm,dump-guest-core=off,mem-share=on,accel=kvm,usb=off"]
    round_trip(man)


def with_machine(value: str) -> list[str]:
    return ["-machine", value, *MICROVM_ARGV[2:]]


def test_import_positional_and_keyed_type() -> None:
    assert imported().machine.type is MachineType.MICROVM
    m = import_argv(with_machine("type=microvm,dump-guest-core=off,mem-share=on")).manifest
    assert m.machine.type is MachineType.MICROVM and m.machine.mem_share
    assert m.machine.dump_guest_core is False


@pytest.mark.parametrize(
    ("value", "message", "mark"),
    [
        ("virt", "Invalid machine type 'virt'", "argv:2:1"),
        ("microvm,usb=on", "usb=on is not supported", "argv:2:9"),
        ("microvm,accel=xen", "Invalid accel 'xen'", "argv:2:9"),
    ],
)
def test_import_refuses(value: str, message: str, mark: str) -> None:
    with pytest.raises(InvalidInput) as info:
        import_argv(with_machine(value))
    assert message in info.value.issues[0].message and str(info.value.issues[0].mark) == mark


def test_accel_is_dropped_with_a_warning() -> None:
    result = import_argv([*MICROVM_ARGV, "-accel", "kvm"])
    assert any("-accel kvm has no effect" in w.message for w in result.warnings)
    assert str(result.warnings[0].mark) == at(1)
