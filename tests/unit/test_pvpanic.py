"""The pvpanic device: its port model, its DSDT entry as ``iasl -d`` reads it back, and the
manifest key that asks for it (compiled for the engine, refused for StratoVirt)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from acpi_plans import disassemble, make_plan, needs_iasl, roundtrip, same_but_creator

from engine.machine import layout
from engine.machine.acpi import pm
from engine.machine.acpi.builder import build_acpi
from engine.machine.pvpanic import (
    PVPANIC_CRASH_LOADED,
    PVPANIC_PANICKED,
    PVPANIC_PORT,
    SUPPORTED,
    PvpanicDevice,
)
from engine.plan import PANIC_ACTIONS, PvpanicPlan
from launcher import model as m
from launcher.compile.engine_plan import compile_plan
from launcher.compile.stratovirt.emit import emit_argv
from launcher.errors import InvalidInput
from launcher.manifest.load import load_text


class Seen:
    def __init__(self) -> None:
        self.events: list[bool] = []

    def __call__(self, crash_loaded: bool) -> None:
        self.events.append(crash_loaded)


def test_a_read_advertises_exactly_the_events_handled() -> None:
    dev = PvpanicDevice(Seen())
    assert dev.read(0, 1) == SUPPORTED == PVPANIC_PANICKED | PVPANIC_CRASH_LOADED == 0b11
    assert dev.read(1, 1) == 0


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (PVPANIC_PANICKED, [False]),
        (PVPANIC_CRASH_LOADED, [True]),
        (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED, [False]),  # QEMU: the panic wins
        (0, []),
        (0x4, []),  # PVPANIC_SHUTDOWN: not advertised, so not acted on
        (0xF8, []),
        (0x101, [False]),  # only the byte the port holds counts
    ],
)
def test_a_write_is_one_event(value: int, want: list[bool]) -> None:
    seen = Seen()
    dev = PvpanicDevice(seen)
    dev.write(0, 1, value)
    dev.write(1, 1, PVPANIC_PANICKED)  # outside the one-byte register: ignored
    assert seen.events == want and dev.events == len(want)


def test_the_port_is_nobody_elses() -> None:
    plan = make_plan("1cpu", devices=1)
    assert plan.serial is not None
    taken = [(pm.PM_PORT, 1), (layout.GED_PORT, layout.GED_PORT_SIZE), (plan.serial.port, 8)]
    for base, length in taken:
        assert base >= PVPANIC_PORT + 1 or base + length <= PVPANIC_PORT, hex(base)
    assert PVPANIC_PORT == 0x505  # QEMU's: what guest tools and docs expect


def _device(text: str, name: str) -> str:
    found = re.search(rf"Device \({name}\)\s*\{{(.*?)\n        \}}", text, re.S)
    assert found, f"no Device ({name}) in\n{text}"
    return found.group(1)


@needs_iasl
@pytest.mark.parametrize("ndev", [0, layout.MAX_MMIO_DEVICES])
def test_dsdt_lists_the_pvpanic_device_linux_binds(ndev: int, tmp_path: Path) -> None:
    plan = dataclasses.replace(make_plan("2s2c", devices=ndev), pvpanic=PvpanicPlan())
    table = build_acpi(plan).table("DSDT")
    body = _device(disassemble(table, tmp_path), "PEVT")
    assert 'Name (_HID, "QEMU0001")' in body  # drivers/misc/pvpanic/pvpanic-mmio.c
    io = re.search(
        r"IO \(Decode16,\s*0x([0-9A-F]+),\s*// Range Minimum\s*0x([0-9A-F]+),\s*// Range Maximum"
        r"\s*0x([0-9A-F]+),\s*// Alignment\s*0x([0-9A-F]+),\s*// Length",
        body,
    )
    assert io, body
    assert [int(g, 16) for g in io.groups()] == [PVPANIC_PORT, PVPANIC_PORT, 1, 1]
    assert same_but_creator(table, roundtrip(table, tmp_path))


@needs_iasl
def test_no_pvpanic_in_the_dsdt_unless_the_plan_asks(tmp_path: Path) -> None:
    text = disassemble(build_acpi(make_plan("1cpu")).table("DSDT"), tmp_path)
    assert "QEMU0001" not in text and "PEVT" not in text


MANIFEST = """\
name = "pv"
qmp = "/run/pv.qmp"
[cpu]
cpus = 1
[memory]
size = "128M"
[boot]
kernel = "/boot/vmlinux"
initrd = "/boot/initrd.img"
"""


def _load(text: str) -> m.Manifest:
    man, issues = load_text(text, "toml")
    assert man is not None, issues
    return man


def test_the_panic_actions_are_the_engines() -> None:
    assert tuple(a.value for a in m.PanicAction) == PANIC_ACTIONS


@pytest.mark.parametrize(
    ("table", "want"),
    [("", None), ("[pvpanic]\n", "poweroff"), ('[pvpanic]\non-panic = "pause"\n', "pause")],
)
def test_the_key_compiles_to_the_plan(table: str, want: str | None) -> None:
    plan = compile_plan(_load(MANIFEST + table))
    assert (plan.pvpanic.on_panic if plan.pvpanic else None) == want


def test_stratovirt_has_no_pvpanic_so_cmdline_refuses_it() -> None:
    man = _load(MANIFEST + '[pvpanic]\non-panic = "run"\n')
    with pytest.raises(InvalidInput) as err:
        emit_argv(man)
    issue = err.value.issues[0]
    assert issue.path == "pvpanic" and "no pvpanic device" in issue.message
    assert emit_argv(_load(MANIFEST))  # the same VM without it is expressible
    _, issues = load_text(MANIFEST + "[pvpanic]\n", "toml", target="stratovirt")
    assert [(i.code, i.path, i.is_error) for i in issues] == [
        ("pvpanic-stratovirt", "pvpanic", True)
    ]
