"""A tiny TOML writer for manifests: tables, arrays of tables, inline scalars and lists.

Enough TOML for what ``manifest_to_data`` produces (str, int, bool, lists of scalars, nested
tables, lists of tables), written the way people write manifests: scalars first, then
``[table]`` sections, ids quoted only when they need it. No dependency for one small job.
"""

from __future__ import annotations

import re
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key(k: str) -> str:
    return k if _BARE.match(k) else string(k)


def string(s: str) -> str:
    out = []
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():  # controls, bidi overrides, invisible characters
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, list):
        return "[" + ", ".join(scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {scalar(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(data: dict[str, Any]) -> str:
    lines: list[str] = []
    _table(data, (), lines)
    return "\n".join(lines).strip("\n") + "\n"


def _table(d: dict[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    for k, v in d.items():
        if not _is_table(v) and not _is_table_array(v):
            lines.append(f"{key(k)} = {scalar(v)}")
    for k, v in d.items():
        sub = (*path, k)
        name = ".".join(key(p) for p in sub)
        if _is_table(v):
            scalars = [x for x in v.values() if not _is_table(x) and not _is_table_array(x)]
            if scalars or not v:
                lines.append("")
                lines.append(f"[{name}]")
            _table(v, sub, lines)
        elif _is_table_array(v):
            for item in v:
                lines.append("")
                lines.append(f"[[{name}]]")
                # nested tables inside array items are written inline to stay unambiguous
                for ik, iv in item.items():
                    lines.append(f"{key(ik)} = {scalar(iv)}")
