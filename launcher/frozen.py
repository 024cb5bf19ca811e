"""``@frozen`` and ``@record``: dataclasses that import no ``dataclasses`` and compile no code.

Shared by the model, the plan and the engine's start-up path, whose classes every ``svlaunch``
and every engine start defines. ``import dataclasses`` pulls in ``inspect`` (and ``ast``,
``dis``, ``tokenize``, ``enum``, ``re``...): ~10 ms of an engine start whose goal is 30 ms. So
these decorators record the fields themselves and build what ``dataclass`` would:

- ``__init__`` is generated exactly as ``dataclass`` writes it, on first use of the class;
- ``__eq__``/``__hash__``/``__repr__`` and the frozen ``__setattr__``/``__delattr__`` are
  shared closures over ``attrgetter``, as fast as generated code;
- ``__dataclass_fields__`` (what ``dataclasses.fields/replace/asdict/is_dataclass`` read) is
  made by the real ``dataclasses`` on first access, so callers that use those keep working and
  pay for ``dataclasses`` only when they do.

A leaf module: it imports nothing from the project (and nothing slow from the standard library).
"""

from __future__ import annotations

import sys
from operator import attrgetter

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of engine start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    C = TypeVar("C", bound=type)
else:

    def dataclass_transform(**_: Any) -> Any:
        return lambda f: f


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One field's options (the subset of ``dataclasses.field`` these decorators support)."""

    __slots__ = ("compare", "default", "default_factory", "init", "name", "repr", "type")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Any = MISSING,
        init: bool = True,
        repr: bool = True,
        compare: bool = True,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    repr: bool = True,
    compare: bool = True,
) -> Any:
    """``dataclasses.field`` for ``@frozen``/``@record`` classes (``dataclasses.field`` works too)."""
    return Field(default, default_factory, init, repr, compare)


def _from_dataclasses_field(value: Any) -> Field | None:
    """A ``dataclasses.field(...)`` class attribute (the model uses those) as a ``Field``."""
    dc = sys.modules.get("dataclasses")
    if dc is None or not isinstance(value, dc.Field):
        return None
    if value.kw_only is True or value.metadata:
        raise TypeError("field(kw_only=, metadata=) is not supported by @frozen/@record")
    missing = dc.MISSING
    return Field(
        MISSING if value.default is missing else value.default,
        MISSING if value.default_factory is missing else value.default_factory,
        value.init,
        value.repr,
        bool(value.compare),
    )


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _collect(cls: type) -> dict[str, Field]:
    """The fields in ``dataclass`` order: the bases' first, then this class's annotations."""
    fields: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("__record_fields__", {}))
    # the class's own annotations, as dataclass reads them (inspect would cost its import)
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else _from_dataclasses_field(value)
        if f is None:
            f = Field(default=value)
        if f.default is not MISSING and type(f.default) in (list, dict, set):
            raise ValueError(f"{cls.__name__}.{name}: mutable default, use default_factory")
        f.name, f.type = name, annotation
        if value is not MISSING:  # as dataclass: the class attribute is the default, or gone
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        fields[name] = f
    seen_default = False
    for f in fields.values():
        if not f.init:
            continue
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(
                f"{cls.__name__}.{f.name}: field layout not supported (no default after a default)"
            )
        seen_default |= has_default
    return fields


def _frozen_error(message: str) -> Exception:
    from dataclasses import FrozenInstanceError  # only when someone assigns: the real class

    return FrozenInstanceError(message)


def _define(cls: Any, *, frozen: bool, eq: bool) -> Any:
    fields = _collect(cls)
    names = frozenset(fields)
    shown = tuple(f.name for f in fields.values() if f.repr)
    compared = tuple(f.name for f in fields.values() if f.compare)
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
            raise _frozen_error(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise _frozen_error(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    own = cls.__dict__
    # as dataclass: a method the class defines itself stays; an __eq__ in the body makes
    # Python set __hash__ = None, which is not an explicit __hash__
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    methods: list[Any] = [m for m in (__repr__, __eq__) if m.__name__ not in own]
    if not eq:
        methods = [m for m in methods if m is not __eq__]
    elif frozen and not explicit_hash:
        methods.append(__hash__)
    elif not explicit_hash:
        cls.__hash__ = None  # mutable and compared by value: unhashable
    if frozen:
        methods += [__setattr__, __delattr__]
    for fn in methods:
        fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
        setattr(cls, fn.__name__, fn)
    if cls.__doc__ is None:  # dataclass writes the signature there
        cls.__doc__ = f"{cls.__name__}({', '.join(f.name for f in fields.values())})"
    cls.__init__ = _LazyInit()
    cls.__match_args__ = tuple(f.name for f in fields.values() if f.init)
    cls.__record_fields__ = fields
    cls.__record_frozen__ = frozen
    cls.__dataclass_fields__ = _LazyDataclassFields()
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
def frozen(cls: C) -> C:
    """``@dataclass(frozen=True)`` without ``dataclasses`` (no ``__post_init__``, no kw_only)."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: __post_init__ is not supported by frozen()")
    return _define(cls, frozen=True, eq=True)  # type: ignore[no-any-return]


@dataclass_transform(field_specifiers=(field, Field))
def record(cls: Any = None, *, eq: bool = True) -> Any:
    """``@dataclass`` / ``@dataclass(eq=False)`` without ``dataclasses``: for the mutable classes
    on the engine's start-up path. ``__post_init__`` runs as dataclass runs it."""
    if cls is None:
        return lambda c: _define(c, frozen=False, eq=eq)
    return _define(cls, frozen=False, eq=eq)


def fields_of(cls_or_obj: Any) -> tuple[Field, ...]:
    """``dataclasses.fields`` for these classes, without importing ``dataclasses``."""
    return tuple(cls_or_obj.__record_fields__.values())


class _LazyInit:
    """Stands in for ``__init__`` until first looked up (to build or to introspect an
    instance), then compiles the real one, replaces itself with it and returns it bound."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        cls = owner if owner is not None else type(obj)
        for c in cls.__mro__:  # the class that was decorated (a plain subclass inherits it)
            if c.__dict__.get("__init__") is self:
                break
        init = _compile_init(c)
        type.__setattr__(c, "__init__", init)
        return init.__get__(obj, owner)


def _compile_init(cls: Any) -> Any:
    """The ``__init__`` ``dataclass`` writes for ``cls``: same signature, same stores."""
    ns: dict[str, Any] = {"__set": object.__setattr__, "__factory": _FACTORY}
    params, body = [], []
    for f in cls.__record_fields__.values():
        value = f.name
        if f.default_factory is not MISSING:
            ns[f"__make_{f.name}"] = f.default_factory
            value = f"__make_{f.name}()"
            if f.init:
                params.append(f"{f.name}=__factory")
                value = f"{value} if {f.name} is __factory else {f.name}"
        elif not f.init:
            continue  # its default is the class attribute, or it is set in __post_init__
        elif f.default is not MISSING:
            ns[f"__default_{f.name}"] = f.default
            params.append(f"{f.name}=__default_{f.name}")
        else:
            params.append(f.name)
        body.append(f"    __set(self, {f.name!r}, {value})\n")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()\n")
    src = f"def __init__(self, {', '.join(params)}):\n" + ("".join(body) or "    pass\n")
    exec(src, ns)  # our own field names only, as dataclasses does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = {f.name: f.type for f in cls.__record_fields__.values() if f.init} | {
        "return": None
    }
    return init


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


class _LazyDataclassFields:
    """``__dataclass_fields__``, made on first access by the real ``dataclasses`` (public API
    only: a field-only shadow class, no code generated), then cached on the class."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        import dataclasses

        cls = owner if owner is not None else type(obj)
        annotations: dict[str, Any] = {}
        ns: dict[str, Any] = {"__annotations__": annotations, "__module__": cls.__module__}
        dm = dataclasses.MISSING
        for f in cls.__record_fields__.values():
            annotations[f.name] = f.type
            ns[f.name] = dataclasses.field(
                default=dm if f.default is MISSING else f.default,
                default_factory=dm if f.default_factory is MISSING else f.default_factory,
                init=f.init,
                repr=f.repr,
                compare=f.compare,
            )
        shadow = dataclasses.dataclass(type(cls.__name__, (), ns), init=False, repr=False, eq=False)
        params = shadow.__dataclass_params__
        params.init = params.repr = params.eq = True  # what the class behaves as
        params.frozen = cls.__record_frozen__
        type.__setattr__(cls, "__dataclass_params__", params)
        type.__setattr__(cls, "__dataclass_fields__", shadow.__dataclass_fields__)
        return shadow.__dataclass_fields__


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for these classes, without importing ``dataclasses``."""
    values = {f.name: getattr(obj, f.name) for f in fields_of(obj) if f.init}
    return type(obj)(**(values | changes))
