"""Rendering of errors and issues for people (text with a source snippet) and machines (JSON).

Text follows ruamel.yaml's marks and rustc's layout: ``file:line:col: error[code]: message``,
the key path, the source line with a caret under the column, then the hint. Snippets are read
from the files named by the marks (or from ``sources`` when the text is in memory). Nothing
below the command modules prints except through these functions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from launcher.errors import InvalidInput, Issue, Mark, SvlaunchError


class Snippets:
    """Source lines by file, read once; unreadable files give no snippet."""

    def __init__(self, sources: dict[str, str] | None = None) -> None:
        self._lines: dict[str, list[str] | None] = {
            k: v.splitlines() for k, v in (sources or {}).items()
        }

    def line(self, mark: Mark) -> str | None:
        if mark.line <= 0:
            return None
        if mark.file not in self._lines:
            try:
                with open(mark.file, encoding="utf-8", errors="replace") as f:
                    self._lines[mark.file] = f.read(1 << 20).splitlines()
            except OSError:
                self._lines[mark.file] = None
        lines = self._lines[mark.file]
        if lines is None or mark.line > len(lines) + 1:
            return None
        return lines[mark.line - 1] if mark.line <= len(lines) else ""  # end of file


def format_issue(issue: Issue, snippets: Snippets | None = None) -> str:
    """One issue as text: location, severity[code], message, path, snippet with caret, hint."""
    where = f"{issue.mark}: " if issue.mark else ""
    code = f"[{issue.code}]" if issue.code else ""
    out = [f"{where}{issue.severity}{code}: {issue.message}"]
    if issue.path:
        out.append(f"  at {issue.path}")
    text = snippets.line(issue.mark) if snippets and issue.mark else None
    if text is not None and issue.mark is not None:
        num = str(issue.mark.line)
        pad = " " * len(num)
        shown = text.expandtabs(1)
        if len(shown) > 120:
            start = max(0, issue.mark.col - 60)
            shown = ("..." if start else "") + shown[start : start + 117]
            col = issue.mark.col - start + (3 if start else 0)
        else:
            col = issue.mark.col
        out.append(f"  {pad} |")
        out.append(f"  {num} | {shown}")
        if col > 0:
            out.append(f"  {pad} | {' ' * (col - 1)}^")
    if issue.hint:
        out.append(f"  hint: {issue.hint}")
    return "\n".join(out)


def issue_to_json(issue: Issue) -> dict[str, Any]:
    m = issue.mark
    return {
        "file": m.file if m else None,
        "line": m.line if m else 0,
        "col": m.col if m else 0,
        "path": issue.path,
        "severity": issue.severity,
        "code": issue.code,
        "message": issue.message,
        "hint": issue.hint,
    }


def print_issues(
    issues: Iterable[Issue], file: TextIO | None = None, snippets: Snippets | None = None
) -> None:
    out = file or sys.stderr
    snippets = snippets or Snippets()
    for issue in issues:
        print(format_issue(issue, snippets), file=out)


def print_error(exc: SvlaunchError, file: TextIO | None = None) -> None:
    """One clear message on stderr: every issue for invalid input, else the message and hint."""
    out = file or sys.stderr
    if isinstance(exc, InvalidInput):
        print_issues(exc.issues, out)
        errors = sum(1 for i in exc.issues if i.is_error)
        print(f"svlaunch: {errors} error(s) found", file=out)
        return
    print(f"svlaunch: {exc}", file=out)


def summary_line(files: int, invalid: int, errors: int, warnings: int) -> str:
    valid = files - invalid
    return (
        f"{files} manifest(s) checked: {valid} valid, {invalid} invalid"
        f" ({errors} error(s), {warnings} warning(s))"
    )


def print_rich_summary(results: list[tuple[str, list[Issue]]], file: TextIO) -> None:
    """A per-file table for terminals (rich imported only here)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False)
    table = Table(title="svlaunch validate", show_lines=False)
    table.add_column("manifest")
    table.add_column("result")
    table.add_column("errors", justify="right")
    table.add_column("warnings", justify="right")
    for path, issues in results:
        e = sum(1 for i in issues if i.is_error)
        w = len(issues) - e
        status = "[red]invalid[/red]" if e else "[green]valid[/green]"
        table.add_row(path, status, str(e), str(w))
    console.print(table)


def json_report(results: list[tuple[str, list[Issue]]]) -> str:
    files = [
        {
            "file": path,
            "valid": not any(i.is_error for i in issues),
            "issues": [issue_to_json(i) for i in issues],
        }
        for path, issues in results
    ]
    errors = sum(1 for _, iss in results for i in iss if i.is_error)
    import json  # only --format json needs it

    return json.dumps({"valid": errors == 0, "errors": errors, "files": files}, indent=2)
