"""The manifest keys' declarations (``launcher.keys``) are complete and name real things.

Every model field a manifest sets is declared, under its own name; every plan field, rule code,
StratoVirt option and QMP command a declaration names exists, so the generators that read the
declarations (schema, docs, loader, dumper, argv, plan, limits, diffs) cannot drift from them.
"""

from __future__ import annotations

import dataclasses

import pytest

import engine.plan
from launcher import keys as k
from launcher import model as m
from launcher.compile.stratovirt.declared import option_keys
from launcher.validate import RULES

#: model classes whose fields are all manifest keys (PciAddress is a value: its keys are the
#: device's; Topology is derived)
CLASSES = [getattr(m, n) for n in m.__all__ if dataclasses.is_dataclass(getattr(m, n))]
CLASSES = [c for c in CLASSES if c not in (m.PciAddress, m.Topology)]
NOT_KEYS = {("Manifest", "source"), ("Manifest", "base_dir")}
SPECS = [(c, s) for c in CLASSES for s in k.specs(c)]
#: the option ids ``sv=(option, property)`` may name: those the emitters and importers read
OPTIONS = {
    "-machine", "-smp", "-cpu", "-drive", "-drive if=pflash", "-netdev", "-chardev", "-mon",
    "-numa node", "-numa dist", "memory-backend-ram", "rng-random", "virtio-blk", "virtio-net",
    "virtconsole", "vhost-vsock", "virtio-balloon", "virtio-rng", "pcie-root-port", "vfio-pci",
    "nec-usb-xhci", "usb-kbd", "usb-tablet",
}  # fmt: skip


def ids(pairs: list[tuple[type, k.Spec]]) -> list[str]:
    return [f"{c.__name__}.{s.attr}" for c, s in pairs]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_is_a_declared_key(cls: type) -> None:
    undeclared = [
        f.name
        for f in dataclasses.fields(cls)
        if k.declared(f) is None and (cls.__name__, f.name) not in NOT_KEYS
    ]
    assert undeclared == []


def test_field_names_are_the_keys() -> None:
    """No drift: the manifest key is the field name with - for _ (queues, not num_queues)."""
    assert [s.attr for _, s in SPECS if s.name != s.attr.replace("_", "-")] == []


@pytest.mark.parametrize(("cls", "s"), [p for p in SPECS if p[1].decl.plan], ids=ids([p for p in SPECS if p[1].decl.plan]))  # fmt: skip
def test_plan_fields_exist(cls: type, s: k.Spec) -> None:
    plan_class, _, name = s.decl.plan.partition(".")
    assert name in {f.name for f in dataclasses.fields(getattr(engine.plan, plan_class))}


def test_limits_name_a_rule() -> None:
    bad = [s.attr for _, s in SPECS if s.decl.limits is not None and s.decl.rule not in RULES]
    assert bad == []


def test_stratovirt_properties_name_known_options() -> None:
    named = {s.decl.sv[0] for _, s in SPECS if isinstance(s.decl.sv, tuple)}
    assert named - OPTIONS == set()
    # the importer accepts exactly the optional properties the declarations give an option
    assert {s.decl.sv[1] for s in option_keys(m.Drive, "-drive")} >= {"aio", "discard"}


def test_live_keys_name_commands_the_engine_answers() -> None:
    from engine.qmp.commands import HANDLERS

    live = {s.decl.apply for _, s in SPECS if s.decl.apply.live}
    assert live == {k.HOT_REPLACE_DISK, k.HOT_REPLACE_NIC, k.BALLOON_TARGET}
    assert {q for a in live for q in a.qmp} - set(HANDLERS) == set()


def test_section_defaults_are_fresh_values() -> None:
    """A section key's default is its class (a default_factory), so the field is never shared."""
    for _, s in SPECS:
        if s.kind == k.SECTION and not s.optional:
            assert isinstance(s.decl.default, type) and s.default_value() == s.decl.default()
