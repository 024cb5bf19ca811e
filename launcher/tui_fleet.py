"""``svlaunch top`` without a name: every VM of this host, htop/virt-top style.

One row per VM (``svlaunch ps``'s rows: state, uptime, vCPUs, memory, the source revision it runs
and whether it drifted), refreshed every second. Up/Down (or j/k) select, Enter opens the
single-VM view of ``launcher.tui_live`` (its ``q`` comes back here), ``q`` quits. The view is a
function of values (``FleetView`` -> ``render_fleet``) so tests print it without a terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import time
from dataclasses import dataclass
from typing import Any

from launcher.report import shown

POLL_S = 1.0
COLUMNS = ("NAME", "STATE", "UPTIME", "VCPUS", "MEMORY", "REVISION", "DRIFT")


@dataclass(frozen=True)
class FleetView:
    rows: tuple[dict[str, Any], ...] = ()
    selected: int = 0
    message: str = ""

    @property
    def current(self) -> dict[str, Any] | None:
        return self.rows[self.selected] if self.rows else None


def with_rows(view: FleetView, rows: list[dict[str, Any]]) -> FleetView:
    """New rows; the selection stays on the same VM when it is still there."""
    name = view.current["name"] if view.current else None
    names = [r["name"] for r in rows]
    selected = names.index(name) if name in names else min(view.selected, max(0, len(rows) - 1))
    return dataclasses.replace(view, rows=tuple(rows), selected=selected)


def move(view: FleetView, step: int) -> FleetView:
    if not view.rows:
        return view
    return dataclasses.replace(view, selected=max(0, min(len(view.rows) - 1, view.selected + step)))


def cells(row: dict[str, Any]) -> tuple[str, ...]:
    mem = row.get("memory")
    drift = row.get("drift")
    return (
        shown(str(row["name"])),
        shown(str(row.get("state", "?"))),
        str(row.get("uptime") or "-"),
        str(row.get("vcpus") or "-"),
        f"{mem >> 20}M" if isinstance(mem, int) and mem else "-",
        shown(str(row.get("revision") or "-")),
        "-" if drift is None else shown(drift or "no"),
    )


def render_fleet(view: FleetView, height: int | None = None) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from launcher.tui_render import STATE_STYLE

    table = Table(expand=True, box=None, header_style="bold")
    for col in COLUMNS:
        table.add_column(col, no_wrap=True)
    fit = max(1, (height or 24) - 4)
    start = max(0, min(view.selected - fit // 2, len(view.rows) - fit))
    for i, row in enumerate(view.rows[start : start + fit], start):
        c = cells(row)
        drift = c[6] not in ("no", "-")
        styled = [
            escape(c[0]),
            f"[{STATE_STYLE.get(c[1], '')}]{escape(c[1])}[/]"
            if STATE_STYLE.get(c[1])
            else escape(c[1]),
            *map(escape, c[2:6]),
            f"[bold magenta]{escape(c[6])}[/]" if drift else escape(c[6]),
        ]
        table.add_row(*styled, style="reverse" if i == view.selected else None)
    title = Text(f"svlaunch top: {len(view.rows)} VM(s) on this host", style="bold")
    keys = Text("Up/Down select  Enter open  q quit", style="dim")
    body: list[Any] = [title, table]
    if not view.rows:
        body.append(Text("no VMs are running here ('svlaunch ps' agrees)"))
    body += [Text(view.message), keys]
    return Group(*body)


_SINGLE = {b"k": "up", b"j": "down", b"\r": "enter", b"\n": "enter", b"q": "q", b"Q": "q"}


def keys_of(data: bytes) -> list[str]:
    """Terminal input as fleet actions: up, down, enter, q (other keys ignored)."""
    out: list[str] = []
    i = 0
    while i < len(data):
        for seq, action in ((b"\x1b[A", "up"), (b"\x1bOA", "up"), (b"\x1b[B", "down"),
                            (b"\x1bOB", "down")):  # fmt: skip
            if data.startswith(seq, i):
                out.append(action)
                i += len(seq)
                break
        else:
            single = _SINGLE.get(data[i : i + 1])
            if single:
                out.append(single)
            i += 1
    return out


def run_fleet() -> int:
    """The fleet view until ``q``; Enter opens a VM's own view and comes back to this one."""
    from launcher.commands.ps import rows
    from launcher.tui_live import Screen, _cbreak, _stdin_fd

    fd_in = _stdin_fd()
    view = with_rows(FleetView(), rows())
    while True:
        chosen = None
        screen = Screen()
        with _cbreak(fd_in), screen:
            next_poll = time.monotonic() + POLL_S
            while chosen is None:
                size = screen.size()
                screen.live.update(render_fleet(view, size.height), refresh=True)
                wait = max(0.0, next_poll - time.monotonic())
                if fd_in < 0:
                    time.sleep(wait)
                elif select.select([fd_in], [], [], wait)[0]:
                    data = os.read(fd_in, 64)
                    if not data:
                        fd_in = -1
                    for key in keys_of(data):
                        if key == "q":
                            return 0
                        if key == "enter" and view.current:
                            chosen = view.current
                        view = move(view, -1 if key == "up" else 1 if key == "down" else 0)
                if time.monotonic() >= next_poll:
                    view = with_rows(view, rows())
                    next_poll = time.monotonic() + POLL_S
        view = dataclasses.replace(view, message=_open(chosen))
        view = with_rows(view, rows())


def _open(row: dict[str, Any]) -> str:
    """The single-VM view of ``row``'s VM; what happened, for the fleet's message line."""
    from launcher import runtime
    from launcher.errors import SvlaunchError
    from launcher.identity import connect
    from launcher.tui_live import DETACHED, SHUTDOWN, run_tui

    name = str(row["name"])
    try:
        meta = runtime.find(name).meta()
        if meta is None:
            return f"{shown(name)} is still starting"
        with contextlib.closing(connect(meta)):
            pass  # its socket is served by its own engine, not someone else
        outcome = run_tui(meta.qmp, serial=meta.serial, title=meta.name)
    except SvlaunchError as exc:
        return f"{shown(name)}: {shown(exc.message)}"
    if outcome.how == DETACHED:
        return f"{shown(name)}: back from its view; it keeps running"
    if outcome.how == SHUTDOWN:
        return f"{shown(name)}: the VM shut down"
    return f"{shown(name)} is gone: {shown(outcome.detail)}"
