"""The diff and the apply summary for people (a rich table on a terminal, plain text otherwise)
and for tools (JSON). Every name, value and reason passes ``launcher.report.shown``: manifests
and VM names are user text."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from launcher.gitops.plan import Plan, Row
from launcher.report import shown

STYLE = {
    "create": "bold green",
    "destroy": "bold red",
    "update-live": "bold cyan",
    "restart": "bold yellow",
    "drift": "bold magenta",
    "unchanged": "dim",
    "orphan": "yellow",
    "unmanaged": "dim",
}
MAX_VALUE = 60


def value_text(key: str, value: Any) -> str:
    """A field value as a short line (sizes as 512M; JSON otherwise; cut at ``MAX_VALUE``)."""
    if value is None:
        return "-"
    last = key.rsplit(".", 1)[-1]
    if isinstance(value, int) and not isinstance(value, bool) and last in ("size", "target"):
        from launcher.manifest.values import format_size

        return str(format_size(value))
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = shown(text)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def header(plan: Plan) -> str:
    rev = plan.revision if plan.revision.startswith("folder:") else plan.revision[:12]
    here = sum(1 for r in plan.rows if r.action not in ("orphan", "unmanaged", "destroy"))
    return (
        f"host {shown(plan.host)}, source {shown(plan.source)} at {rev}: {here} VM(s) here,"
        f" {plan.elsewhere} manifest(s) for other hosts only"
    )


def summary(plan: Plan) -> str:
    counts: dict[str, int] = {}
    for r in plan.changes:
        counts[r.action] = counts.get(r.action, 0) + 1
    skipped = sum(1 for r in plan.rows if r.skip)
    tail = f" ({skipped} left alone by their policy)" if skipped else ""
    if not counts:
        return "no changes" + tail
    parts = ", ".join(f"{n} {a}" for a, n in counts.items())
    return f"{len(plan.changes)} to change: {parts}{tail}"


def print_plan(plan: Plan, out: TextIO | None = None, *, color: str = "auto") -> None:
    out = out or sys.stdout
    tty = out.isatty() if color == "auto" else color == "always"
    if tty:
        _rich(plan, out)
        return
    print(header(plan), file=out)
    for r in plan.rows:
        print(_line(r), file=out)
        for c in r.changes:
            print(
                f"    {shown(c.key)}: {value_text(c.key, c.old)} -> {value_text(c.key, c.new)}"
                f"  ({c.apply})",
                file=out,
            )
    print(summary(plan), file=out)


def _line(r: Row) -> str:
    why = shown(r.reason)
    if r.skip:
        why += f"; not applied: {shown(r.skip)}"
    return f"  {r.action:<12} {shown(r.name)}" + (f"  ({why})" if why else "")


def _rich(plan: Plan, out: TextIO) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, force_terminal=True, highlight=False)
    table = Table(title=escape(header(plan)), title_justify="left", expand=False)
    table.add_column("VM")
    table.add_column("ACTION")
    table.add_column("FIELD / WHY")
    table.add_column("OLD")
    table.add_column("NEW")
    table.add_column("APPLIES")
    for r in plan.rows:
        style = STYLE.get(r.action, "")
        why = shown(r.reason) + (f" [not applied: {shown(r.skip)}]" if r.skip else "")
        table.add_row(escape(shown(r.name)), f"[{style}]{r.action}[/]", escape(why), "", "", "")
        for c in r.changes:
            table.add_row(
                "", "", escape("  " + shown(c.key)), escape(value_text(c.key, c.old)),
                escape(value_text(c.key, c.new)), escape(c.apply),
            )  # fmt: skip
    console.print(table)
    console.print(escape(summary(plan)))


def plan_json(plan: Plan) -> str:
    data = plan.to_json()
    data["changed"] = len(plan.changes)
    return json.dumps(data, indent=2, default=str)
