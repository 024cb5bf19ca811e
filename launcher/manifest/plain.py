"""What any manifest value may be, whatever its key: checked on the parsed data, before the schema.

A manifest becomes StratoVirt arguments, host paths, a JSON plan and terminal output. None of
those can carry a NUL, and control characters in them only ever serve to confuse a terminal or a
log (bidirectional overrides, to make a reviewer read a path that is not there), so keys and
strings may not hold them (a tab, and a newline in values, are allowed). No
manifest number needs more than 64 bits, and no manifest is nested more than a few levels, so
anything beyond ``MAX_DEPTH`` is refused here instead of exhausting the recursion of the stages
after. Values only YAML or TOML know (null, dates, bytes) are refused too: no key takes one.
The walk is iterative: it must not itself recurse on the input it guards against.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from launcher.errors import Issue
from launcher.manifest.sourcemap import Path, SourceMap, format_path

MAX_DEPTH = 64  # tables and arrays; real manifests use 4
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # i64 .. u64: every number StratoVirt reads
#: C0 controls but tab (and newline in values), DEL, the C1 controls (0x9b is a CSI) and the
#: bidirectional embeddings, overrides and isolates (text that reads differently than it is)
_BIDI = "\u202a-\u202e\u2066-\u2069"
_KEY_CONTROL = f"[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f{_BIDI}]"
_VALUE_CONTROL = f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_BIDI}]"


def control_in(text: str, *, key: bool = False) -> tuple[int, str] | None:
    """The first control character in ``text``: its 1-based position and a description; None
    if there is none. Values may hold tabs and newlines (a kernel command line over several
    lines), keys tabs."""
    if text.isprintable():  # the usual case, without compiling a pattern (start-up cost)
        return None
    m = re.search(_KEY_CONTROL if key else _VALUE_CONTROL, text)  # (re caches the pattern)
    if m is None:
        return None
    code = ord(m.group())
    kind = "bidirectional control" if code > 0x9F else "control character"
    name = "a NUL" if code == 0 else f"the {kind} U+{code:04X}"
    return m.start() + 1, f"{name} at character {m.start() + 1}"


def _foreign(value: Any, path: Path) -> Issue:
    """A value YAML or TOML can write but no manifest key takes: null, a date, bytes."""
    if value is None:
        what, hint = "the key has no value (null)", "write a value or remove the key"
    elif isinstance(value, (datetime.date, datetime.time)):
        what, hint = "the value reads as a date or time", "quote it to make it a string"
    else:  # !!binary bytes, !!set, !!omap pairs...
        what = "the value is a YAML " + ("binary" if isinstance(value, bytes) else "special type")
        hint = "write plain text, a number, a boolean, a table or a list"
    return Issue(
        f"{what}; manifests hold text, numbers, booleans, tables and lists",
        format_path(path),
        hint,
        code="wrong-type",
    )


def check_plain(data: Any, smap: SourceMap) -> list[Issue]:
    """Located issues for control characters (at the key or value), huge numbers and deep
    nesting."""
    issues: list[Issue] = []
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_DEPTH:
            issues.append(
                Issue(
                    f"the manifest is nested more than {MAX_DEPTH} levels deep",
                    format_path(path[: MAX_DEPTH + 1]),
                    "a manifest needs a few levels of tables: check the brackets",
                    code="too-deep",
                )
            )
            continue
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                found = control_in(key, key=True) if isinstance(key, str) else None
                if found:
                    issues.append(
                        Issue(
                            f"a key holds {found[1]}",
                            format_path((*path, key)),
                            "keys are names: remove the control character",
                            smap.mark((*path, key), at="key"),
                            code="control-character",
                        )
                    )
                    continue
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, n), item) for n, item in reversed(list(enumerate(value))))
        elif isinstance(value, str):
            found = control_in(value)
            if found:
                issues.append(
                    Issue(
                        f"the value holds {found[1]}; StratoVirt arguments and host paths cannot",
                        format_path(path),
                        "remove it (write a tab or a newline as itself, nothing else)",
                        code="control-character",
                    )
                )
        elif value is None or not isinstance(value, (bool, int, float, str)):
            issues.append(_foreign(value, path))
        elif isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            issues.append(
                Issue(
                    f"the number has {value.bit_length()} bits; no manifest value needs more"
                    " than 64",
                    format_path(path),
                    "write a size with a unit (512M, 4G) or check the value",
                    code="number-range",
                )
            )
    return smap.locate(issues)
