"""The JSON Schema layer: shape errors (unknown keys, wrong types, bad enums) as ``Issue``s.

The schema is ``svlaunch.schema.json`` next to this module, generated from the model's key
declarations (``launcher.manifest.schemagen``; a test keeps the file current): reading it is
cheap, where generating it would create every model class on every run. It is checked by
``launcher.manifest.shape``, a checker compiled once per process from that data (importing
``jsonschema`` alone would exceed the CLI's 60 ms; docs/performance.md).
Its error records have the fields of ``jsonschema``'s, and ``issues_from_errors`` words either
kind alike, which is how the tests hold the two checkers to the same verdicts. Messages are
rewritten into svlaunch's style: the key path, the value, what is expected, and for unknown
keys and enum values a difflib "did you mean" (difflib is imported only when one is needed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from engine.names import VM_NAME_HINT, VM_NAME_PATTERN
from launcher.errors import Issue
from launcher.manifest.schema_vocab import ADDR_PATTERN, INTLIST_PATTERN, SIZE_PATTERN
from launcher.manifest.sourcemap import format_path
from launcher.manifest.values import SIZE_HINT

_SYNTAX_HINTS = {
    SIZE_PATTERN: SIZE_HINT,
    INTLIST_PATTERN: 'write a list like [0, 1, 4] or a string like "0-1,4"',
    ADDR_PATTERN: 'write "SLOT" or "SLOT.FUNCTION", e.g. "0x3" or "0x3.0x1"',
}

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
    "object": "a table",
    "array": "a list",
    "number": "a number",
}


#: patterns whose mismatch breaks a rule of its own: pattern -> (code, message, hint)
_PATTERN_RULES = {VM_NAME_PATTERN: ("vm-name", "{} is not a valid VM name", VM_NAME_HINT)}
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "svlaunch.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    import json

    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=1)
def _checker() -> Any:
    from launcher.manifest.shape import compile_schema

    return compile_schema(schema())


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(s: dict[str, Any]) -> list[str]:
    if "anyOf" in s:
        out: list[str] = []
        for sub in s["anyOf"]:
            for e in _expected(sub):
                if e not in out:
                    out.append(e)
        return out
    if "enum" in s:
        return [" | ".join(repr(v) for v in s["enum"])]
    t = s.get("type")
    if t == "string" and "pattern" in s:
        return ["a string in the documented syntax"]
    return [_TYPE_NAMES.get(t, str(t))] if t else []


def _hint_for(s: dict[str, Any]) -> str:
    desc = s.get("description", "")
    return desc.split(". ")[0].rstrip(".") if desc else ""


def check_shape(data: Any) -> list[Issue]:
    """Every shape error in ``data`` (one issue per problem, sorted by path)."""
    errors: list[Any] = []
    _checker()(data, (), errors)
    return issues_from_errors(errors) if errors else []


def issues_from_errors(errors: Iterable[Any]) -> list[Issue]:
    """Issues for schema errors from ``shape`` or ``jsonschema`` (same fields), sorted by path."""
    issues: dict[Issue, None] = {}  # one per problem: each "required" error words all missing keys
    for err in errors:
        issues.update(dict.fromkeys(_convert(err)))
    return sorted(issues, key=lambda i: i.path)


MAX_SUGGESTIONS = 64  # unknown keys per table that get a "did you mean"


def _close(word: str, options: list[str], cutoff: float) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    return close[0] if close else None


def _within_branch(s: dict[str, Any], value: Any, path: tuple[Any, ...]) -> list[Issue]:
    """For a table, a list or an integer that fails every ``anyOf`` branch: the errors of the
    one branch its type selects (``serial = {backend = "socket", paht = ...}`` is an unknown key
    ``paht``, not "expected "stdio" or a table, got a table"). Strings keep the shorthand's
    message (bad syntax, or the words it accepts)."""
    if isinstance(value, bool) or not isinstance(value, dict | list | int):
        return []
    from launcher.manifest.shape import compile_schema, has_type

    branches = [sub for sub in s["anyOf"] if "type" in sub and has_type(value, sub["type"])]
    if len(branches) != 1:
        return []
    errors: list[Any] = []
    compile_schema(branches[0])(value, path, errors)
    return [issue for e in errors for issue in _convert(e)]


def _convert(err: Any) -> list[Issue]:
    path = tuple(err.absolute_path)
    where = format_path(path)
    v, s, value = err.validator, err.schema, err.instance
    if v == "additionalProperties" and isinstance(value, dict):
        known = list(s.get("properties", {}))
        out: list[Issue] = []
        for key in value:
            if key in known:
                continue
            # a suggestion costs a difflib pass over the known keys: only for the first ones
            # (the report shows a few dozen issues per file anyway)
            close = _close(key, known, 0.6) if len(out) < MAX_SUGGESTIONS else None
            hint = (
                f"did you mean '{close}'?"
                if close
                else ("known keys: " + ", ".join(known) if known else "")
            )
            out.append(
                Issue(f"unknown key '{key}'", format_path((*path, key)), hint, code="unknown-key")
            )
        return out
    if v == "required":
        missing = [k for k in err.validator_value if k not in value]
        desc = [s.get("properties", {}).get(k, {}).get("description", "") for k in missing]
        return [
            Issue(
                f"missing required key '{k}'" + (f" in {where}" if where else ""),
                where,
                f"add {k} = ... ({d.rstrip('.')})" if d else f"add {k} = ...",
                code="missing-key",
            )
            for k, d in zip(missing, desc, strict=True)
        ]
    if v == "anyOf":
        inner = _within_branch(s, value, path)
        if inner:
            return inner
    if v == "anyOf" and isinstance(value, str):
        syntax = [sub["pattern"] for sub in s["anyOf"] if "pattern" in sub]
        if syntax:
            return [
                Issue(
                    f"invalid syntax {_show(value)}",
                    where,
                    _SYNTAX_HINTS.get(syntax[0], ""),
                    code="bad-syntax",
                )
            ]
    if v in ("type", "anyOf"):
        exp = " or ".join(_expected(s)) or "another type"
        hint = _hint_for(s)
        if isinstance(value, int) and not isinstance(value, bool) and "a string" in exp:
            hint = "quote the value (YAML reads 52:54:... and 0x1 as numbers)"
        return [
            Issue(
                f"expected {exp}, got {_kind(value)} {_show(value)}", where, hint, code="wrong-type"
            )
        ]
    if v == "enum":
        options = [str(o) for o in err.validator_value]
        close = _close(str(value), options, 0.5)
        hint = f"did you mean '{close}'?" if close else "one of: " + ", ".join(options)
        return [
            Issue(
                f"{_show(value)} is not one of: {', '.join(options)}", where, hint, code="bad-value"
            )
        ]
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        rel = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[
            v
        ]
        return [Issue(f"value {value} must be {rel} {err.validator_value}", where, code="range")]
    if v == "minLength":
        return [Issue("must not be empty", where, code="empty-value")]
    if v == "pattern":
        rule = _PATTERN_RULES.get(err.validator_value)
        if rule is not None:
            code, message, hint = rule
            return [Issue(message.format(_show(value)), where, hint, code=code)]
        return [Issue(f"invalid syntax {_show(value)}", where, _hint_for(s), code="bad-syntax")]
    if v == "propertyNames":
        return [Issue("keys (ids) must not be empty", where, code="empty-value")]
    return [Issue(err.message, where, code="schema")]
