"""The TUI's pure half: view models from QMP replies/events, rendered to a capture console."""

from __future__ import annotations

import io

from rich.console import Console

from launcher import tui


def render_text(view: tui.VmView, width: int = 80) -> str:
    console = Console(
        file=io.StringIO(),
        width=width,
        height=60,
        color_system=None,
        legacy_windows=False,
        force_terminal=False,
    )
    console.print(tui.render(view))
    return console.file.getvalue()  # type: ignore[attr-defined]


STATS = {
    "uptime": 3725.2,
    "devices": [
        {"id": "rootfs", "kind": "blk", "counters": {"reads": 120, "writes": 7}},
        {"id": "net0", "kind": "net", "counters": {"rx_bytes": 4096, "tx_bytes": 512}},
    ],
    "vcpu-exits": [1, 2],
}


def builtin_view() -> tui.VmView:
    return tui.view_from_replies(
        "web1",
        status={"running": True, "singlestep": False, "status": "running"},
        cpus=[{"CPU": 0, "thread_id": 101}, {"CPU": 1, "thread_id": 102}],
        memory={"base-memory": 512 << 20},
        balloon={"actual": 256 << 20},
        stats=STATS,
        greeting_version={"qemu": {"micro": 1, "minor": 0, "major": 5}, "package": ""},
    )


def test_full_screen_for_the_builtin_engine() -> None:
    out = render_text(builtin_view())
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "│ VM      web1" in out
    assert "│ state   running" in out
    assert "│ uptime  1:02:05" in out
    assert "│ vCPUs   2 (threads 101, 102)" in out
    assert "│ memory  512 MiB  (balloon: 256 MiB)" in out
    assert "StratoVirt-compatible (qemu 5.0.1)" in out
    assert any("rootfs" in line and "reads=120  writes=7" in line for line in lines)
    assert any("net0" in line and "rx_bytes=4096  tx_bytes=512" in line for line in lines)
    assert "p  pause   r  resume   o  powerdown   b  reset   q  detach" in out


def test_other_qmp_servers_degrade_gracefully() -> None:
    view = tui.view_from_replies(
        "qemu",
        status={"running": False, "status": "prelaunch"},
        cpus=None,
        stats=None,  # x-svlaunch-query-stats refused
        greeting_version={"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian"},
    )
    out = render_text(view)
    assert "statistics not offered by this QMP server" in out
    assert "│ uptime  -" in out
    assert "QEMU 7.2.0 Debian" in out
    assert "balloon" not in out


def test_events_drive_state_and_the_log_is_bounded() -> None:
    view = builtin_view()
    view = tui.apply_event(view, "STOP", {}, 1_700_000_000, 5000)
    assert view.state == "paused"
    view = tui.apply_event(view, "BALLOON_CHANGED", {"actual": 128 << 20}, 1_700_000_001, 0)
    assert view.balloon == 128 << 20
    for i in range(20):
        view = tui.apply_event(view, "RESUME" if i % 2 else "STOP", {}, 1_700_000_002 + i, 0)
    assert len(view.events) == tui.MAX_EVENTS
    assert view.state == "running"
    out = render_text(view)
    assert "│ state   running" in out
    assert out.count("RESUME") + out.count("STOP") == tui.MAX_EVENTS


def test_views_are_immutable_values() -> None:
    a = builtin_view()
    b = tui.apply_event(a, "STOP", {}, 0, 0)
    assert a.state == "running" and b.state == "paused"
    assert a.events == () and len(b.events) == 1


def test_serial_tail_keeps_complete_lines_and_strips_escapes() -> None:
    view = tui.VmView("x")
    view, rest = tui.add_serial(view, "", b"Linux version 6.1\r\nlog")
    assert view.serial == ("Linux version 6.1",) and rest == "log"
    view, rest = tui.add_serial(view, rest, b"in: \x1b[1mroot\x1b[0m\n")
    assert view.serial[-1] == "login: root"
    for i in range(30):
        view, rest = tui.add_serial(view, rest, f"line {i}\n".encode())
    assert len(view.serial) == tui.MAX_SERIAL_LINES
    assert "line 29" in render_text(view)


def test_message_line() -> None:
    out = render_text(tui.with_message(builtin_view(), "pause: GenericError"))
    assert "pause: GenericError" in out
