"""The live terminal UI's pure half: immutable view models built from QMP replies and events.

Everything here is a function of values: QMP replies and events in, a ``VmView`` out. No
sockets, no terminal, no engine objects, so it serves the builtin engine, StratoVirt and QEMU
alike, and tests drive it without any of them. Rendering is ``launcher/tui_render.py``; the I/O
half (keys, sockets, refresh) is ``launcher/tui_live.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from typing import Any

MAX_EVENTS = 64  # kept; the screen shows as many of the newest as fit
MAX_SERIAL_LINES = 200

# key -> (QMP command, label). Shown on screen in this order; "q" detaches (no command).
KEYS: dict[str, tuple[str | None, str]] = {
    "p": ("stop", "pause"),
    "r": ("cont", "resume"),
    "o": ("system_powerdown", "powerdown"),
    "b": ("system_reset", "reset"),
    "q": (None, "detach"),
}
#: keys whose action cannot be taken back: the first press only asks for a second one
CONFIRM = frozenset({"b"})


@dataclass(frozen=True)
class DeviceView:
    id: str
    kind: str
    counters: tuple[tuple[str, int], ...] = ()
    rates: tuple[tuple[str, float], ...] = ()  # per second since the previous poll, non-zero only


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
    vcpu_exits: int | None = None  # all vCPUs' exits to the engine (builtin engine only)
    vcpu_exit_rate: float | None = None  # per second since the previous poll
    memory: int | None = None  # bytes
    balloon: int | None = None  # bytes, None: no balloon
    devices: tuple[DeviceView, ...] | None = None  # None: the server has no statistics
    events: tuple[EventView, ...] = ()
    serial: tuple[str, ...] = ()
    serial_note: str = "no console output"  # shown while ``serial`` is empty
    message: str = ""
    polled_at: float | None = None  # monotonic seconds of the poll the statistics come from


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


def _rate(new: int, old: int | None, dt: float | None) -> float:
    if old is None or not dt or dt <= 0 or new < old:
        return 0.0
    return (new - old) / dt


def _devices(
    stats: Any, previous: tuple[DeviceView, ...] | None, dt: float | None
) -> tuple[DeviceView, ...] | None:
    if not isinstance(stats, dict):
        return None
    before = {d.id: dict(d.counters) for d in previous or ()}
    out = []
    for dev in stats.get("devices") or []:
        if not isinstance(dev, dict):
            continue
        ident = str(dev.get("id", "?"))
        raw = dev.get("counters") or {}
        counters = tuple(
            sorted((str(k), int(v)) for k, v in raw.items() if isinstance(v, int | float))
        )
        old = before.get(ident, {})
        rates = tuple((k, r) for k, v in counters if (r := _rate(v, old.get(k), dt)) > 0)
        out.append(DeviceView(ident, str(dev.get("kind", "?")), counters, rates))
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
    now: float | None = None,
) -> VmView:
    """A view from the replies of one poll (None where a command was refused or absent).

    ``now`` (monotonic seconds) dates the statistics, so that counters become per-second rates
    against ``previous``.
    """
    prev = previous or VmView(name)
    dt = now - prev.polled_at if now is not None and prev.polled_at is not None else None
    state = str(status.get("status", "unknown")) if isinstance(status, dict) else prev.state
    threads = tuple(
        int(c.get("thread_id", c.get("thread-id")) or 0) for c in cpus or [] if isinstance(c, dict)
    )
    mem = memory.get("base-memory") if isinstance(memory, dict) else prev.memory
    bal = balloon.get("actual") if isinstance(balloon, dict) else None
    uptime = stats.get("uptime") if isinstance(stats, dict) else None
    exits = None
    if isinstance(stats, dict) and isinstance(stats.get("vcpu-exits"), list):
        exits = sum(int(n) for n in stats["vcpu-exits"])
    exit_rate = None if exits is None else _rate(exits, prev.vcpu_exits, dt)
    return dataclasses.replace(
        prev,
        name=name,
        state=state,
        server=server_text(greeting_version) or prev.server,
        uptime_s=float(uptime) if uptime is not None else None,
        vcpus=threads or prev.vcpus,
        vcpu_exits=exits,
        vcpu_exit_rate=exit_rate if dt else None,
        memory=mem,
        balloon=bal,
        devices=_devices(stats, prev.devices, dt),
        polled_at=now,
    )


_EVENT_STATE = {"STOP": "paused", "RESUME": "running", "SHUTDOWN": "shutdown"}


def apply_event(
    view: VmView, name: str, data: dict[str, Any] | None, seconds: int, microseconds: int
) -> VmView:
    """The view after a QMP event: the log grows (bounded), the state follows lifecycle events."""
    stamp = time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{microseconds // 1000:03d}"
    data = data or {}
    text = json.dumps(data, separators=(",", ":")) if data else ""
    events = (*view.events, EventView(stamp, name, text))[-MAX_EVENTS:]
    changes: dict[str, Any] = {"events": events}
    if name in _EVENT_STATE:
        changes["state"] = _EVENT_STATE[name]
    if name == "BALLOON_CHANGED" and "actual" in data:
        changes["balloon"] = data["actual"]
    return dataclasses.replace(view, **changes)


def saw_shutdown(view: VmView) -> bool:
    """Whether the server announced its end, as opposed to vanishing: a SHUTDOWN, or a RESET as
    the last word (a microVM stops on reset; the builtin engine's QMP ``system_reset`` sends
    RESET alone before it exits)."""
    names = [ev.name for ev in view.events]
    return "SHUTDOWN" in names or (bool(names) and names[-1] == "RESET")


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b.|[\x00-\x08\x0b-\x1f\x7f]")


def add_serial(view: VmView, pending: str, data: bytes) -> tuple[VmView, str]:
    """Append console bytes; returns the view and the unfinished last line (kept aside)."""
    text = pending + data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    *done, rest = text.split("\n")
    if not done:
        return view, rest[-4096:]
    lines = tuple(_CONTROL.sub("", line).expandtabs() for line in done)
    return dataclasses.replace(view, serial=(*view.serial, *lines)[-MAX_SERIAL_LINES:]), rest


def with_message(view: VmView, message: str) -> VmView:
    return dataclasses.replace(view, message=message)


def with_serial_note(view: VmView, note: str) -> VmView:
    return dataclasses.replace(view, serial_note=note)


_KEY_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|.)?", re.DOTALL)


def keys_of(data: bytes) -> list[str]:
    """The single-key presses in terminal input: arrows and other escape sequences dropped
    (Down is ``ESC [ B``: its ``B`` must not ask for a reset), upper case folded to lower."""
    text = _KEY_ESCAPES.sub("", data.decode("utf-8", "ignore"))
    return [c.lower() for c in text if c.isprintable()]
