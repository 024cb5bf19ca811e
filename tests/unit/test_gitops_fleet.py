"""The fleet view's pure half (``launcher.tui_fleet``): rows, selection, keys, rendering."""

from __future__ import annotations

from rich.console import Console

from launcher.tui_fleet import FleetView, keys_of, move, render_fleet, with_rows

ROWS = [
    {"name": "db", "state": "running", "uptime": "0:10:00", "vcpus": 2, "memory": 512 << 20,
     "revision": "0123456789ab", "drift": ""},
    {"name": "web", "state": "paused", "uptime": "0:01:00", "vcpus": 1, "memory": 256 << 20,
     "revision": "0123456789ab", "drift": "paused, its manifest says it runs"},
    {"name": "hand\x1b[2J", "state": "running", "uptime": "0:00:05", "vcpus": 1,
     "memory": 128 << 20, "revision": None, "drift": None},
]  # fmt: skip


def text(view: FleetView, height: int = 20) -> str:
    console = Console(width=120, record=True, force_terminal=False)
    console.print(render_fleet(view, height))
    return console.export_text()


def test_rows_and_selection() -> None:
    view = with_rows(FleetView(), ROWS)
    assert view.current["name"] == "db"
    view = move(move(view, 1), 5)
    assert view.current["name"] == "hand\x1b[2J"
    view = with_rows(view, [ROWS[1], ROWS[2]])  # the selection follows the VM, not the index
    assert view.current["name"] == "hand\x1b[2J" and view.selected == 1
    assert move(FleetView(), 1) == FleetView()


def test_render_shows_the_columns_and_escapes_names() -> None:
    out = text(with_rows(FleetView(), ROWS))
    assert "3 VM(s) on this host" in out
    for col in ("NAME", "STATE", "UPTIME", "VCPUS", "MEMORY", "REVISION", "DRIFT"):
        assert col in out
    assert "0123456789ab" in out and "512M" in out and "paused, its manifest says it runs" in out
    assert "\x1b" not in out and "hand\\x1b[2J" in out
    assert "no VMs are running here" in text(FleetView())


def test_keys() -> None:
    assert keys_of(b"\x1b[A\x1b[Bjk\rq\x1bOBx") == [
        "up",
        "down",
        "down",
        "up",
        "enter",
        "q",
        "down",
    ]
