"""Rendering of errors and issues for people (text with a source snippet) and machines (JSON).

Text follows ruamel.yaml's marks and rustc's layout: ``file:line:col: error[code]: message``,
the key path, the source line with a caret under the column, then the hint. Snippets are read
from the files named by the marks (or from ``sources`` when the text is in memory). Nothing
below the command modules prints except through these functions.

Everything shown comes from users (keys, values, paths, source lines, argv), so every string
goes through ``escape`` here, at the one place issues become text or JSON: a crafted manifest
cannot move the cursor, clear the screen or colour a fake "valid" line. Output is bounded too:
at most ``MAX_ISSUES`` issues per file and ``MAX_FIELD`` characters per field (or line).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from launcher.errors import InvalidInput, Issue, Mark, SvlaunchError

MAX_ISSUES = 50  # per file, by default: a broken file must not flood the terminal
MAX_FIELD = 1000  # characters of one message line, hint, path or file name
MAX_LINES = 40  # lines of one message
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str, *, lines: bool = False) -> str:
    """``text`` with every character a terminal would act on or hide written out as an escape.

    Not printable per ``str.isprintable`` (C0/C1 controls, DEL, format characters such as the
    bidi overrides, separators, surrogates, private use, unassigned) becomes ``\\n``, ``\\xNN``,
    ``\\uNNNN``; a byte that was not UTF-8 (a surrogate escape from a file name or argv) becomes
    ``\\xNN``, the byte itself. ``lines=True`` keeps line breaks of a multi-line message.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (lines and ch == "\n"):
            out.append(ch)
            continue
        code = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def shown(text: str, *, lines: bool = False, limit: int = MAX_FIELD) -> str:
    """``escape``d and cut to ``limit`` characters, saying how many were left out; with
    ``lines``, each line is cut so, and at most ``MAX_LINES`` lines are kept (the first and the
    last halves: a log tail's last line is the one that names the cause)."""
    if lines and "\n" in text:
        parts = [shown(line, limit=limit) for line in text.split("\n")]
        if len(parts) > MAX_LINES:
            half = MAX_LINES // 2
            gap = f"... ({len(parts) - 2 * half} more lines)"
            parts = [*parts[:half], gap, *parts[-half:]]
        return "\n".join(parts)
    text = escape(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


_YAML_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def source_lines(text: str, file: str) -> list[str]:
    """``text``'s lines as the parser numbered them: YAML breaks lines at CR, LF, NEL and the
    Unicode separators; TOML (and argv) only at LF (a lone CR or form feed is not a new line)."""
    if file.endswith((".yaml", ".yml")):
        return _YAML_BREAKS.split(text)
    return [line.removesuffix("\r") for line in text.split("\n")]


class Snippets:
    """Source lines by file, read once; unreadable files give no snippet."""

    def __init__(self, sources: dict[str, str] | None = None) -> None:
        self._lines: dict[str, list[str] | None] = {
            k: source_lines(v, k) for k, v in (sources or {}).items()
        }

    def line(self, mark: Mark) -> str | None:
        if mark.line <= 0:
            return None
        if mark.file not in self._lines:
            self._lines[mark.file] = _read_lines(mark.file)
        lines = self._lines[mark.file]
        if lines is None or mark.line > len(lines) + 1:
            return None
        return lines[mark.line - 1] if mark.line <= len(lines) else ""  # end of file


def _read_lines(path: str) -> list[str] | None:
    """The lines of a regular file (never blocking on a FIFO or reading a device); None if it
    cannot be read."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            text = f.read(1 << 20).decode("utf-8", errors="replace")
            return source_lines(text.removeprefix("\ufeff"), path)  # as the loader parsed it
        except OSError:
            return None


def format_issue(issue: Issue, snippets: Snippets | None = None) -> str:
    """One issue as text: location, severity[code], message, path, snippet with caret, hint."""
    where = f"{shown(str(issue.mark))}: " if issue.mark else ""
    code = f"[{escape(issue.code)}]" if issue.code else ""
    out = [f"{where}{issue.severity}{code}: {shown(issue.message, lines=True)}"]
    if issue.path:
        out.append(f"  at {shown(issue.path)}")
    text = snippets.line(issue.mark) if snippets and issue.mark else None
    if text is not None and issue.mark is not None:
        out += _snippet(text, issue.mark)
    if issue.hint:
        out.append(f"  hint: {shown(issue.hint, lines=True)}")
    return "\n".join(out)


def _snippet(text: str, mark: Mark) -> list[str]:
    """The source line (escaped, at most 120 columns around the mark) with a caret under it."""
    num = str(mark.line)
    pad = " " * len(num)
    raw = text.expandtabs(1)
    before = escape(raw[: max(mark.col - 1, 0)])
    line = before + escape(raw[max(mark.col - 1, 0) :])
    col = len(before) + 1 if mark.col > 0 else 0
    if len(line) > 120:
        start = max(0, col - 60)
        line = ("..." if start else "") + line[start : start + 117]
        col = col - start + (3 if start else 0)
    out = [f"  {pad} |", f"  {num} | {line}"]
    if col > 0:
        out.append(f"  {pad} | {' ' * (col - 1)}^")
    return out


def issue_to_json(issue: Issue) -> dict[str, Any]:
    """The issue's fields, escaped like the text (a ``jq -r`` of them is safe on a terminal)."""
    m = issue.mark
    return {
        "file": shown(m.file) if m else None,
        "line": m.line if m else 0,
        "col": m.col if m else 0,
        "path": shown(issue.path),
        "severity": issue.severity,
        "code": escape(issue.code),
        "message": shown(issue.message, lines=True),
        "hint": shown(issue.hint, lines=True),
    }


def capped(issues: Iterable[Issue], limit: int = MAX_ISSUES) -> tuple[list[Issue], int]:
    """At most ``limit`` issues (0: all), errors chosen before warnings, in their order; and
    how many are left out."""
    every = list(issues)
    if limit <= 0 or len(every) <= limit:
        return every, 0
    ranked = sorted(range(len(every)), key=lambda n: not every[n].is_error)[:limit]
    return [every[n] for n in sorted(ranked)], len(every) - limit


def print_issues(
    issues: Iterable[Issue],
    file: TextIO | None = None,
    snippets: Snippets | None = None,
    limit: int = MAX_ISSUES,
    more_hint: str = "",
) -> None:
    """Each issue as text, at most ``limit`` of them, then a line counting the rest."""
    out = file or sys.stderr
    snippets = snippets or Snippets()
    first, rest = capped(issues, limit)
    for issue in first:
        print(format_issue(issue, snippets), file=out)
    if rest:
        where = f" in {shown(str(first[-1].mark.file))}" if first[-1].mark else ""
        hint = f" ({more_hint})" if more_hint else ""
        print(f"svlaunch: {rest} more issue(s){where} not shown{hint}", file=out)


def print_message(text: str, file: TextIO | None = None) -> None:
    """One line of a command's own output that quotes user text (paths, names), escaped."""
    print(shown(text, lines=True), file=file or sys.stderr)


def print_error(exc: SvlaunchError, file: TextIO | None = None) -> None:
    """One clear message on stderr: every issue for invalid input, else the message and hint."""
    out = file or sys.stderr
    if isinstance(exc, InvalidInput):
        files = {i.mark.file for i in exc.issues if i.mark} - {"argv"}
        more = "svlaunch validate --max-issues 0 FILE shows them all" if files else ""
        print_issues(exc.issues, out, more_hint=more)
        errors = sum(1 for i in exc.issues if i.is_error)
        print(f"svlaunch: {errors} error(s) found", file=out)
        return
    where = f"{shown(str(exc.mark))}: " if exc.mark else ""
    print(f"svlaunch: {where}{shown(exc.message, lines=True)}", file=out)
    if exc.hint:
        print(f"  hint: {shown(exc.hint, lines=True)}", file=out)


def summary_line(files: int, invalid: int, errors: int, warnings: int) -> str:
    valid = files - invalid
    return (
        f"{files} manifest(s) checked: {valid} valid, {invalid} invalid"
        f" ({errors} error(s), {warnings} warning(s))"
    )


def print_rich_summary(results: list[tuple[str, list[Issue]]], file: TextIO) -> None:
    """A per-file table for terminals (rich imported only here; paths escaped, markup off)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, highlight=False)
    table = Table(title="svlaunch validate", show_lines=False)
    table.add_column("manifest")
    table.add_column("result")
    table.add_column("errors", justify="right")
    table.add_column("warnings", justify="right")
    for path, issues in results:
        e = sum(1 for i in issues if i.is_error)
        w = len(issues) - e
        status = Text("invalid", "red") if e else Text("valid", "green")
        table.add_row(Text(shown(path)), status, str(e), str(w))
    console.print(table)


def json_report(results: list[tuple[str, list[Issue]]], limit: int = MAX_ISSUES) -> str:
    """Every file's verdict and its first ``limit`` issues (``issues_not_shown`` counts the rest)."""
    files = []
    for path, issues in results:
        first, rest = capped(issues, limit)
        files.append(
            {
                "file": shown(path),
                "valid": not any(i.is_error for i in issues),
                "issues": [issue_to_json(i) for i in first],
                "issues_not_shown": rest,
            }
        )
    errors = sum(1 for _, iss in results for i in iss if i.is_error)
    import json  # only --format json needs it

    return json.dumps({"valid": errors == 0, "errors": errors, "files": files}, indent=2)
