"""A small, fast checker for the JSON Schema subset the manifest schema uses.

Why not ``jsonschema``: importing it (attrs, referencing, rpds, format checkers) costs more than
the rest of ``svlaunch cmdline`` together, and its generic machinery (resolvers, evolve per
subschema) adds a cost per manifest (docs/performance.md). The manifest schema uses a
handful of draft 2020-12 keywords, so ``compile_schema`` turns the same schema data into nested
closures once per process, and ``ShapeError`` records carry exactly what ``jsonschema``'s
``ValidationError`` would (``validator``, ``validator_value``, ``schema``, ``instance``,
``absolute_path``), emitted in the same order, so one converter words both alike.

Supported: ``type``, ``enum``, ``required``, ``properties``, ``additionalProperties`` (false or
a schema), ``propertyNames``, ``anyOf``, ``items`` (a schema), ``minimum``, ``maximum``,
``minLength``, ``pattern``; annotations are ignored. Subschemas compile on first use; any other
keyword raises ``ValueError`` when compiled (``eager=True`` compiles everything at once), so the
schema cannot grow a keyword that is silently not checked.
``tests/unit/test_schema_shape.py`` runs both checkers over every corpus and generated documents and
asserts they agree error for error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Path = tuple[str | int, ...]
Check = Callable[[Any, Path, list["ShapeError"]], None]

ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
    | {"x-stratovirt", "x-plan", "x-apply"}
)


class ShapeError:
    """One schema violation, shaped like ``jsonschema.ValidationError`` (the fields we use)."""

    __slots__ = (
        "absolute_path",
        "context",
        "detail",
        "instance",
        "schema",
        "validator",
        "validator_value",
    )

    def __init__(
        self,
        validator: str,
        validator_value: Any,
        schema: dict[str, Any],
        instance: Any,
        path: Path,
        context: list[ShapeError] | None = None,
        detail: str = "",
    ) -> None:
        self.validator = validator
        self.validator_value = validator_value
        self.schema = schema
        self.instance = instance
        self.absolute_path = path
        self.context = context or []
        self.detail = detail  # required: the missing key

    @property
    def message(self) -> str:
        """``jsonschema``'s wording (used only for keywords the converter does not word)."""
        v, value, inst = self.validator, self.validator_value, self.instance
        if v == "type":
            return f"{inst!r} is not of type {value!r}"
        if v == "enum":
            return f"{inst!r} is not one of {value!r}"
        if v == "required":
            return f"{self.detail!r} is a required property"
        if v == "additionalProperties":
            extra = sorted((k for k in inst if k not in self.schema.get("properties", {})), key=str)
            verb = "was" if len(extra) == 1 else "were"
            return (
                "Additional properties are not allowed "
                f"({', '.join(repr(k) for k in extra)} {verb} unexpected)"
            )
        if v == "anyOf":
            return f"{inst!r} is not valid under any of the given schemas"
        if v == "minimum":
            return f"{inst!r} is less than the minimum of {value!r}"
        if v == "maximum":
            return f"{inst!r} is greater than the maximum of {value!r}"
        if v == "minLength":
            return f"{inst!r} " + ("should be non-empty" if value == 1 else "is too short")
        if v == "pattern":
            return f"{inst!r} does not match {value!r}"
        return f"{inst!r} is invalid ({v})"

    def __repr__(self) -> str:
        return f"<ShapeError {self.validator} at {list(self.absolute_path)}: {self.message}>"


def _is_integer(x: Any) -> bool:
    # draft 4+: 1.0 is an integer; bool is never a number
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "integer": _is_integer,
    "number": _is_number,
    "null": lambda x: x is None,
}


def has_type(x: Any, name: str | list[str]) -> bool:
    """Whether ``x`` is of the JSON Schema type(s) ``name`` (draft 2020-12 rules)."""
    return any(_TYPES[n](x) for n in (name if isinstance(name, list) else [name]))


def _type(value: Any, schema: dict[str, Any], eager: bool) -> Check:
    names = value if isinstance(value, list) else [value]
    preds = tuple(_TYPES[n] for n in names)
    if len(preds) == 1:
        pred = preds[0]

        def check(x: Any, path: Path, out: list[ShapeError]) -> None:
            if not pred(x):
                out.append(ShapeError("type", value, schema, x, path))

        return check

    def check_any(x: Any, path: Path, out: list[ShapeError]) -> None:
        if not any(p(x) for p in preds):
            out.append(ShapeError("type", value, schema, x, path))

    return check_any


def _enum(value: list[Any], schema: dict[str, Any], eager: bool) -> Check:
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"enum of non-strings is not supported: {value!r}")
    allowed = frozenset(value)

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if not (isinstance(x, str) and x in allowed):
            out.append(ShapeError("enum", value, schema, x, path))

    return check


def _required(value: list[str], schema: dict[str, Any], eager: bool) -> Check:
    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, dict):
            for key in value:
                if key not in x:
                    out.append(ShapeError("required", value, schema, x, path, None, key))

    return check


def _properties(value: dict[str, Any], schema: dict[str, Any], eager: bool) -> Check:
    subs = {key: _sub(sub, eager) for key, sub in value.items()}
    get = subs.get

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, dict):
            for key, item in x.items():
                sub = get(key)
                if sub is not None:
                    sub(item, (*path, key), out)

    return check


def _additional(value: bool | dict[str, Any], schema: dict[str, Any], eager: bool) -> Check:
    if "patternProperties" in schema:
        raise ValueError("patternProperties is not supported")
    known = frozenset(schema.get("properties", ()))
    if value is True:
        return lambda x, path, out: None
    if value is False:

        def closed(x: Any, path: Path, out: list[ShapeError]) -> None:
            if isinstance(x, dict) and not known.issuperset(x):
                out.append(ShapeError("additionalProperties", value, schema, x, path))

        return closed
    sub = _sub(value, eager)

    def each(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, dict):
            for key, item in x.items():
                if key not in known:
                    sub(item, (*path, key), out)

    return each


def _property_names(value: dict[str, Any], schema: dict[str, Any], eager: bool) -> Check:
    sub = _sub(value, eager)

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, dict):
            for key in x:
                sub(key, path, out)

    return check


def _any_of(value: list[dict[str, Any]], schema: dict[str, Any], eager: bool) -> Check:
    subs = tuple(_sub(sub, eager) for sub in value)

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        context: list[ShapeError] = []
        for sub in subs:
            errors: list[ShapeError] = []
            sub(x, path, errors)
            if not errors:
                return
            context += errors
        out.append(ShapeError("anyOf", value, schema, x, path, context))

    return check


def _items(value: bool | dict[str, Any], schema: dict[str, Any], eager: bool) -> Check:
    if not isinstance(value, dict) or "prefixItems" in schema:
        raise ValueError("only items: {schema} is supported")
    sub = _sub(value, eager)

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, list):
            for i, item in enumerate(x):
                sub(item, (*path, i), out)

    return check


def _minimum(value: int | float, schema: dict[str, Any], eager: bool) -> Check:
    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if _is_number(x) and x < value:
            out.append(ShapeError("minimum", value, schema, x, path))

    return check


def _maximum(value: int | float, schema: dict[str, Any], eager: bool) -> Check:
    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if _is_number(x) and x > value:
            out.append(ShapeError("maximum", value, schema, x, path))

    return check


def _min_length(value: int, schema: dict[str, Any], eager: bool) -> Check:
    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, str) and len(x) < value:
            out.append(ShapeError("minLength", value, schema, x, path))

    return check


def _pattern(value: str, schema: dict[str, Any], eager: bool) -> Check:
    compiled: list[re.Pattern[str]] = []  # compiled on first use: most runs never need it

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if isinstance(x, str):
            if not compiled:
                compiled.append(re.compile(value))
            if not compiled[0].search(x):
                out.append(ShapeError("pattern", value, schema, x, path))

    return check


_KEYWORDS: dict[str, Callable[[Any, dict[str, Any], bool], Check]] = {
    "type": _type,
    "enum": _enum,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "propertyNames": _property_names,
    "anyOf": _any_of,
    "items": _items,
    "minimum": _minimum,
    "maximum": _maximum,
    "minLength": _min_length,
    "pattern": _pattern,
}


def _sub(schema: dict[str, Any], eager: bool) -> Check:
    """A subschema's check; unless ``eager``, compiled on its first use (a manifest touches a
    fraction of the schema, and ``svlaunch cmdline`` checks one manifest)."""
    if eager:
        return compile_schema(schema, eager=True)
    compiled: list[Check] = []

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        if not compiled:
            compiled.append(compile_schema(schema))
        compiled[0](x, path, out)

    return check


def compile_schema(schema: dict[str, Any], eager: bool = False) -> Check:
    """A function ``check(instance, path, out)`` appending every violation to ``out``.

    Keywords run in the schema's own key order, as ``jsonschema`` runs them, so errors at the
    same path come out in the same order. ``eager`` compiles every subschema now, which also
    proves the whole schema uses only supported keywords (the tests do; the CLI need not).
    """
    steps: list[Check] = []
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        make = _KEYWORDS.get(key)
        if make is None:
            raise ValueError(f"the shape checker does not support the keyword {key!r}")
        steps.append(make(value, schema, eager))
    if not steps:
        return lambda x, path, out: None
    if len(steps) == 1:
        return steps[0]
    steps_t = tuple(steps)

    def check(x: Any, path: Path, out: list[ShapeError]) -> None:
        for step in steps_t:
            step(x, path, out)

    return check


def iter_errors(check: Check, instance: Any) -> list[ShapeError]:
    """Every violation of ``instance`` (empty when it has the schema's shape)."""
    out: list[ShapeError] = []
    check(instance, (), out)
    return out
