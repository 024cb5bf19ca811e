"""The live terminal UI's pure half: immutable view models built from QMP, and their rendering.

Everything here is a function of values: QMP replies and events in, a ``VmView`` out, a rich
renderable from that. No sockets, no terminal, no engine objects, so it talks to the builtin
engine, StratoVirt and QEMU alike, and tests render it to a capture console at a fixed width.
The I/O half (keys, sockets, refresh) is ``launcher/tui_live.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from typing import Any

MAX_EVENTS = 8
MAX_SERIAL_LINES = 8

# key -> (QMP command, label). Shown on screen in this order; "q" detaches (no command).
KEYS: dict[str, tuple[str | None, str]] = {
    "p": ("stop", "pause"),
    "r": ("cont", "resume"),
    "o": ("system_powerdown", "powerdown"),
    "b": ("system_reset", "reset"),
    "q": (None, "detach"),
}

STATE_STYLE = {
    "running": "bold green",
    "paused": "bold yellow",
    "prelaunch": "bold yellow",
    "shutdown": "bold red",
    "exited": "bold red",
}


@dataclass(frozen=True)
class DeviceView:
    id: str
    kind: str
    counters: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EventView:
    time: str
    name: str
    data: str


@dataclass(frozen=True)
class VmView:
    name: str
    state: str = "unknown"
    server: str = ""
    uptime_s: float | None = None
    vcpus: tuple[int, ...] = ()  # host thread ids, one per vCPU
    memory: int | None = None  # bytes
    balloon: int | None = None  # bytes, None: no balloon
    devices: tuple[DeviceView, ...] | None = None  # None: the server has no statistics
    events: tuple[EventView, ...] = ()
    serial: tuple[str, ...] = ()
    message: str = ""


# -- building views from QMP ----------------------------------------------------------------------


def server_text(greeting_version: dict[str, Any] | None) -> str:
    """'QEMU 7.2.0' or 'qemu 5.0.1 (StratoVirt-compatible)' from the greeting's version."""
    if not greeting_version:
        return ""
    q = greeting_version.get("qemu") or {}
    ver = f"{q.get('major', '?')}.{q.get('minor', '?')}.{q.get('micro', '?')}"
    pkg = str(greeting_version.get("package") or "").strip()
    if ver == "5.0.1" and not pkg:
        return "StratoVirt-compatible (qemu 5.0.1)"
    return f"QEMU {ver}" + (f" {pkg}" if pkg else "")


def _devices(stats: Any) -> tuple[DeviceView, ...] | None:
    if not isinstance(stats, dict):
        return None
    out = []
    for dev in stats.get("devices") or []:
        counters = tuple(sorted((str(k), int(v)) for k, v in (dev.get("counters") or {}).items()))
        out.append(DeviceView(str(dev.get("id", "?")), str(dev.get("kind", "?")), counters))
    return tuple(out)


def view_from_replies(
    name: str,
    *,
    status: Any,
    cpus: Any = None,
    memory: Any = None,
    balloon: Any = None,
    stats: Any = None,
    greeting_version: dict[str, Any] | None = None,
    previous: VmView | None = None,
) -> VmView:
    """A view from the replies of one poll (None where a command was refused or absent)."""
    prev = previous or VmView(name)
    state = str(status.get("status", "unknown")) if isinstance(status, dict) else prev.state
    threads = tuple(int(c.get("thread_id", c.get("thread-id", 0))) for c in cpus or [])
    mem = memory.get("base-memory") if isinstance(memory, dict) else prev.memory
    bal = balloon.get("actual") if isinstance(balloon, dict) else None
    uptime = stats.get("uptime") if isinstance(stats, dict) else None
    return dataclasses.replace(
        prev,
        name=name,
        state=state,
        server=server_text(greeting_version) or prev.server,
        uptime_s=float(uptime) if uptime is not None else None,
        vcpus=threads or prev.vcpus,
        memory=mem,
        balloon=bal,
        devices=_devices(stats),
    )


_EVENT_STATE = {"STOP": "paused", "RESUME": "running", "SHUTDOWN": "shutdown"}


def apply_event(
    view: VmView, name: str, data: dict[str, Any], seconds: int, microseconds: int
) -> VmView:
    """The view after a QMP event: the log grows (bounded), the state follows lifecycle events."""
    stamp = time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{microseconds // 1000:03d}"
    text = json.dumps(data, separators=(",", ":")) if data else ""
    events = (*view.events, EventView(stamp, name, text))[-MAX_EVENTS:]
    changes: dict[str, Any] = {"events": events}
    if name in _EVENT_STATE:
        changes["state"] = _EVENT_STATE[name]
    if name == "BALLOON_CHANGED" and "actual" in data:
        changes["balloon"] = data["actual"]
    return dataclasses.replace(view, **changes)


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


def add_serial(view: VmView, pending: str, data: bytes) -> tuple[VmView, str]:
    """Append console bytes; returns the view and the unfinished last line (kept aside)."""
    text = pending + data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    *done, rest = text.split("\n")
    if not done:
        return view, rest[-4096:]
    lines = tuple(_CONTROL.sub("", line) for line in done)
    return dataclasses.replace(view, serial=(*view.serial, *lines)[-MAX_SERIAL_LINES:]), rest


def with_message(view: VmView, message: str) -> VmView:
    return dataclasses.replace(view, message=message)


# -- rendering ------------------------------------------------------------------------------------


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    return f"{n / (1 << 20):.0f} MiB"


def _uptime(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def render(view: VmView) -> Any:
    """The whole screen as one rich renderable (a Group of panels)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("VM", Text(view.name, style="bold"))
    head.add_row("state", Text(view.state, style=STATE_STYLE.get(view.state, "bold")))
    head.add_row("uptime", _uptime(view.uptime_s))
    cpus = ", ".join(str(t) for t in view.vcpus) if view.vcpus else "-"
    head.add_row("vCPUs", f"{len(view.vcpus)} (threads {cpus})" if view.vcpus else "-")
    mem = _size(view.memory)
    if view.balloon is not None:
        mem += f"  (balloon: {_size(view.balloon)})"
    head.add_row("memory", mem)
    if view.server:
        head.add_row("server", view.server)

    if view.devices is None:
        devices: Any = Text("statistics not offered by this QMP server", style="dim")
    elif not view.devices:
        devices = Text("no devices", style="dim")
    else:
        devices = Table(expand=True, box=None, pad_edge=False)
        for col in ("device", "kind", "counters"):
            devices.add_column(col, style="bold" if col == "device" else None)
        for d in view.devices:
            devices.add_row(d.id, d.kind, "  ".join(f"{k}={v}" for k, v in d.counters) or "-")

    log = Table.grid(padding=(0, 1))
    for ev in view.events:
        log.add_row(ev.time, Text(ev.name, style="bold cyan"), ev.data)
    events: Any = log if view.events else Text("no events yet", style="dim")

    serial: Any = (
        Text("\n".join(view.serial), no_wrap=True, overflow="ellipsis")
        if view.serial
        else Text("no console output", style="dim")
    )

    keys = Text()
    for key, (_, label) in KEYS.items():
        keys.append(f" {key} ", style="reverse")
        keys.append(f" {label}  ")

    return Group(
        Panel(head, title="svlaunch top", title_align="left"),
        Panel(devices, title="devices"),
        Panel(events, title="QMP events"),
        Panel(serial, title="serial console"),
        keys,
        Text(view.message, style="italic", no_wrap=True, overflow="ellipsis"),
    )
