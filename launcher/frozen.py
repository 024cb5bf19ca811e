"""``@frozen``: a frozen dataclass that compiles no code at import time.

Shared by the model and the plan, the two modules whose ~60 classes every ``svlaunch`` and
every engine start imports. A leaf module: it imports nothing from the project.
"""

from __future__ import annotations

import dataclasses
import inspect  # already loaded by dataclasses
from dataclasses import MISSING, FrozenInstanceError, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Any:
        return lambda f: f


C = TypeVar("C", bound=type)


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: C) -> C:
    """``@dataclass(frozen=True)`` that compiles no code at import time.

    ``dataclass`` compiles six methods per class with ``exec``; for the ~30 classes here that
    was 15-40 ms of every ``svlaunch cmdline``. Here ``dataclass`` only records the fields
    (``fields()``, ``replace()``, ``asdict()`` and ``__match_args__`` work as usual);
    ``__eq__``/``__hash__``/``__repr__`` and the frozen ``__setattr__``/``__delattr__`` are
    shared closures over ``attrgetter``, as fast as generated code; ``__init__`` is generated
    exactly as ``dataclass`` would, on first use of the class (``_LazyInit``).
    """
    if cls.__doc__ is None:  # dataclass would call inspect.signature() to write one
        cls.__doc__ = f"{cls.__name__}({', '.join(inspect.get_annotations(cls))})"
    # dataclass refuses a non-frozen subclass of a frozen base: present our bases as what
    # dataclass itself sees them as (non-frozen) while it records this class's fields.
    bases = [b.__dataclass_params__ for b in cls.__mro__[1:] if "__frozen_fields__" in vars(b)]
    for p in bases:
        p.frozen = False
    try:
        cls = dataclasses.dataclass(cls, init=False, repr=False, eq=False)  # type: ignore[assignment]
    finally:
        for p in bases:
            p.frozen = True
    fs = fields(cls)
    names = frozenset(f.name for f in fs)
    shown = tuple(f.name for f in fs if f.repr)
    compared = tuple(f.name for f in fs if f.compare)
    seen_default = False
    for f in fs:
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if (seen_default and not has_default) or not f.init or f.kw_only is True:
            raise TypeError(f"{cls.__name__}.{f.name}: field layout not supported by frozen()")
        seen_default |= has_default
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: __post_init__ is not supported by frozen()")
    key = (
        attrgetter(*compared)
        if len(compared) > 1
        else lambda o: tuple(map(o.__getattribute__, compared))
    )

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(key(self))

    def __repr__(self: Any) -> str:
        inner = ", ".join([f"{n}={getattr(self, n)!r}" for n in shown])
        return f"{self.__class__.__qualname__}({inner})"

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    for fn in (__eq__, __hash__, __repr__, __setattr__, __delattr__):
        fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
        setattr(cls, fn.__name__, fn)
    cls.__init__ = _LazyInit(cls)  # type: ignore[misc]
    cls.__frozen_fields__ = names  # type: ignore[attr-defined]
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    params.init = params.repr = params.eq = params.frozen = True  # what the class behaves as
    return cls


class _LazyInit:
    """Stands in for ``__init__`` until first looked up (to build or to introspect an
    instance), then compiles the real one, replaces itself with it and returns it bound."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        init = _compile_init(self.cls)
        type.__setattr__(self.cls, "__init__", init)
        return init.__get__(obj, owner)


def _compile_init(cls: type) -> Any:
    """The ``__init__`` ``dataclass(frozen=True)`` writes: same signature, same stores."""
    ns: dict[str, Any] = {"__set": object.__setattr__, "__factory": _FACTORY}
    params, body = [], []
    for f in fields(cls):
        value = f.name
        if f.default is not MISSING:
            ns[f"__default_{f.name}"] = f.default
            params.append(f"{f.name}=__default_{f.name}")
        elif f.default_factory is not MISSING:
            ns[f"__make_{f.name}"] = f.default_factory
            params.append(f"{f.name}=__factory")
            value = f"__make_{f.name}() if {f.name} is __factory else {f.name}"
        else:
            params.append(f.name)
        body.append(f"    __set(self, {f.name!r}, {value})\n")
    src = f"def __init__(self, {', '.join(params)}):\n" + ("".join(body) or "    pass\n")
    exec(src, ns)  # our own field names only, as dataclasses does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = {f.name: f.type for f in fields(cls)} | {"return": None}
    return init
