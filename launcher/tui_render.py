"""The live terminal UI's look: a ``VmView`` (launcher/tui.py) as one rich renderable.

Rendering is a pure function of the view and the terminal's size, so tests print it to a
capture console. Given a height, the screen is laid out to fit it exactly: the header, the key
help and the message line always show; the device table, the event log and the serial tail
share what is left, and the serial panel takes the spare rows (the key line stays on the bottom
row, so nothing jumps as the log grows).
"""

from __future__ import annotations

from typing import Any

from launcher.tui import KEYS, VmView

DEFAULT_ROWS = 8  # event and serial rows shown when the height is not known

STATE_STYLE = {
    "running": "bold green",
    "paused": "bold yellow",
    "prelaunch": "bold yellow",
    "shutdown": "bold red",
    "exited": "bold red",
    "gone": "bold red",
}


def size_text(n: int | float | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{int(n) >> 30} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.0f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n:.0f} B"


def uptime_text(s: float | None) -> str:
    if s is None:
        return "-"
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def _count(key: str, n: float) -> str:
    return size_text(n) if "bytes" in key else f"{n:.0f}"


def counters_text(
    counters: tuple[tuple[str, int], ...], rates: tuple[tuple[str, float], ...]
) -> str:
    """``reads=120 (+5/s)  rx_bytes=4.0 KiB (+512 B/s)``: totals, and rates where they moved."""
    per_s = dict(rates)
    parts = []
    for key, value in counters:
        text = f"{key}={_count(key, value)}"
        if key in per_s:
            text += f" (+{_count(key, per_s[key])}/s)"
        parts.append(text)
    return "  ".join(parts) or "-"


def _head_rows(view: VmView) -> list[tuple[str, Any]]:
    from rich.text import Text

    rows: list[tuple[str, Any]] = [
        ("VM", Text(view.name, style="bold", no_wrap=True, overflow="ellipsis")),
        ("state", Text(view.state, style=STATE_STYLE.get(view.state, "bold"))),
        ("uptime", uptime_text(view.uptime_s)),
    ]
    cpus = "-"
    if view.vcpus:
        cpus = f"{len(view.vcpus)} (threads {', '.join(str(t) for t in view.vcpus)})"
    if view.vcpu_exits is not None:
        rate = f" (+{view.vcpu_exit_rate:.0f}/s)" if view.vcpu_exit_rate else ""
        cpus += f"  exits {view.vcpu_exits}{rate}"
    rows.append(("vCPUs", cpus))
    mem = size_text(view.memory)
    if view.balloon is not None:
        mem += f"  (balloon: {size_text(view.balloon)})"
    rows.append(("memory", mem))
    return rows


def _panel(body: Any, title: str, height: int | None = None, subtitle: str = "") -> Any:
    from rich.panel import Panel

    return Panel(
        body,
        title=title,
        title_align="left",
        subtitle=subtitle or None,
        subtitle_align="right",
        height=height,
    )


def render(view: VmView, height: int | None = None, *, keys: bool = True) -> Any:
    """The whole screen as one rich renderable; ``height`` (rows) fits it to the terminal.

    ``keys=False``: without the key help (the last screen, printed once the TUI has ended).
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head_rows = _head_rows(view)
    devices = view.devices
    n_dev = len(devices) if devices else 0
    dev_rows = 1 + n_dev if n_dev else 1  # header + rows, or one note
    event_rows = serial_rows = DEFAULT_ROWS
    serial_h = None
    if height is not None:
        # the device table takes at most 2/5 of the rows below the header, the log and the
        # serial tail share the rest (a row each at least)
        flexible = height - (len(head_rows) + 2) - 2
        dev_rows = min(dev_rows, max(2, min(flexible * 2 // 5 - 2, flexible - 8)))
        rest = max(6, height - (len(head_rows) + 2) - 2 - (dev_rows + 2))
        event_rows = max(1, min(len(view.events) or 1, rest // 2 - 2))
        serial_h = rest - (event_rows + 2)
        serial_rows = max(1, serial_h - 2)

    head = Table.grid(padding=(0, 2), expand=True)
    head.add_column(style="bold", no_wrap=True, width=6)
    head.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    for key, value in head_rows:
        head.add_row(key, value)

    if devices is None:
        dev_body: Any = Text("statistics not offered by this QMP server", style="dim")
    elif not devices:
        dev_body = Text("no devices", style="dim")
    else:
        table = Table(expand=True, box=None, pad_edge=False)
        table.add_column("device", style="bold", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("kind", no_wrap=True, ratio=1)
        table.add_column("counters", no_wrap=True, overflow="ellipsis", ratio=5)
        shown = devices if dev_rows - 1 >= n_dev else devices[: dev_rows - 2]
        for d in shown:
            table.add_row(d.id, d.kind, counters_text(d.counters, d.rates))
        if len(shown) < n_dev:
            table.add_row(Text(f"+{n_dev - len(shown)} more", style="dim"), "", "")
        dev_body = table

    log = Table.grid(padding=(0, 1))
    log.add_column(no_wrap=True)
    log.add_column(no_wrap=True, style="bold cyan")
    log.add_column(no_wrap=True, overflow="ellipsis")
    for ev in view.events[-event_rows:]:
        log.add_row(ev.time, ev.name, ev.data)
    events: Any = log if view.events else Text("no events yet", style="dim")

    serial: Any = (
        Text("\n".join(view.serial[-serial_rows:]), no_wrap=True, overflow="ellipsis")
        if view.serial
        else Text(view.serial_note, style="dim")
    )

    help_line = Text(no_wrap=True, overflow="ellipsis")
    for key, (_, label) in KEYS.items() if keys else ():
        help_line.append(f" {key} ", style="reverse")
        help_line.append(f" {label}  ")

    return Group(
        _panel(head, "svlaunch top", subtitle=view.server),
        _panel(dev_body, "devices"),
        _panel(events, "QMP events"),
        _panel(serial, "serial console", serial_h),
        help_line,
        Text(view.message, style="italic", no_wrap=True, overflow="ellipsis"),
    )
