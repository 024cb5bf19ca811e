"""``launcher.model``'s classes behave exactly like ``@dataclass(frozen=True)`` ones.

``model.frozen`` builds them without compiling code at import (start-up time); each class here
is compared with a real frozen dataclass of the same fields: signature, defaults, repr,
equality, hashing, immutability, ``replace``/``asdict``/pattern matching.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from launcher import model as m

CLASSES = [
    c
    for c in vars(m).values()
    if isinstance(c, type) and c.__module__ == m.__name__ and dataclasses.is_dataclass(c)
]


def reference(cls: type) -> type:
    """A real ``@dataclass(frozen=True)`` with ``cls``'s fields, under the same name."""
    specs = []
    for f in dataclasses.fields(cls):
        kw: dict[str, Any] = {"compare": f.compare, "repr": f.repr}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        specs.append((f.name, f.type, dataclasses.field(**kw)))
    ref = dataclasses.make_dataclass(cls.__name__, specs, frozen=True)
    ref.__qualname__ = cls.__qualname__
    return ref


def sample_args(cls: type, salt: int) -> dict[str, Any]:
    """Values for the required fields (and one optional one, to vary)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if not required:
            continue
        t = str(f.type)
        if "PciAddress" in t:
            out[f.name] = m.PciAddress("pcie.0", salt)
        elif t.startswith("tuple"):
            out[f.name] = (salt,)
        elif t.startswith("int"):
            out[f.name] = salt
        elif "Policy" in t:
            out[f.name] = m.NumaPolicy.BIND
        elif "Backend" in t:
            out[f.name] = m.ChardevBackend.SOCKET
        else:
            out[f.name] = f"v{salt}"
    return out


def test_every_model_class_is_covered() -> None:
    assert len(CLASSES) >= 28 and m.Manifest in CLASSES and m.Drive in CLASSES


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_same_behaviour_as_a_frozen_dataclass(cls: type) -> None:
    ref = reference(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(ref))
    assert cls.__match_args__ == ref.__match_args__  # type: ignore[attr-defined]
    a, a2, b = cls(**sample_args(cls, 1)), cls(**sample_args(cls, 1)), cls(**sample_args(cls, 2))
    ra, rb = ref(**sample_args(cls, 1)), ref(**sample_args(cls, 2))
    assert repr(a) == repr(ra) and repr(b) == repr(rb)
    assert a == a2 and hash(a) == hash(a2) == hash(ra)
    assert (a == b) == (ra == rb) and (a != b) == (ra != rb)
    assert a != ra  # another class is never equal, as with dataclasses
    assert dataclasses.asdict(a) == dataclasses.asdict(ra)
    assert dataclasses.replace(a) == a and pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) == a
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError, match=f"cannot assign to field '{name}'"):
        setattr(a, name, 0)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field"):
        delattr(a, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.new_attribute = 1  # type: ignore[attr-defined]
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert (params.init, params.repr, params.eq, params.frozen) == (True, True, True, True)


def test_defaults_are_fresh_per_instance_and_compare_false_is_honoured() -> None:
    a, b = m.Manifest("vm", source="a.toml"), m.Manifest("vm", source="b.toml", base_dir="/x")
    assert a == b and hash(a) == hash(b)
    assert a.machine == m.Machine() and a.usb == m.Usb()
    assert a.machine is not b.machine  # default_factory ran once per instance
    assert m.Manifest("vm", machine=m.Machine(m.MachineType.Q35)).machine.type == "q35"


def test_wrong_arguments_fail_like_dataclasses() -> None:
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'file'"):
        m.Drive("d")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        m.Boot(nope=1)  # type: ignore[call-arg]


def test_unsupported_layouts_are_refused() -> None:
    with pytest.raises(TypeError, match="field layout"):

        @m.frozen
        class Bad:
            a: int = 1
            b: int

    with pytest.raises(TypeError, match="__post_init__"):

        @m.frozen
        class Post:
            a: int = 1

            def __post_init__(self) -> None:
                pass
