"""The TUI's pure half: view models from QMP replies/events, rendered to a capture console."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from launcher import tui, tui_render

ROOT = Path(__file__).resolve().parents[2]


def render_text(view: tui.VmView, width: int = 80, height: int | None = None) -> str:
    console = Console(
        file=io.StringIO(),
        width=width,
        height=height or 60,
        color_system=None,
        legacy_windows=False,
        force_terminal=False,
    )
    console.print(tui_render.render(view, height))
    return console.file.getvalue()  # type: ignore[attr-defined]


STATS = {
    "uptime": 3725.2,
    "devices": [
        {"id": "rootfs", "kind": "blk", "counters": {"reads": 120, "writes": 7}},
        {"id": "net0", "kind": "net", "counters": {"rx_bytes": 4096, "tx_bytes": 512}},
    ],
    "vcpu-exits": [1, 2],
}


def builtin_view(**kw: object) -> tui.VmView:
    return tui.view_from_replies(
        "web1",
        status={"running": True, "singlestep": False, "status": "running"},
        cpus=[{"CPU": 0, "thread_id": 101}, {"CPU": 1, "thread_id": 102}],
        memory={"base-memory": 512 << 20},
        balloon={"actual": 256 << 20},
        stats=STATS,
        greeting_version={"qemu": {"micro": 1, "minor": 0, "major": 5}, "package": ""},
        **kw,  # type: ignore[arg-type]
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
    assert "│ vCPUs   2 (threads 101, 102)  exits 3 " in out
    assert "StratoVirt-compatible (qemu 5.0.1)" in out
    assert any("rootfs" in line and "reads=120  writes=7" in line for line in lines)
    assert any("net0" in line and "rx_bytes=4.0 KiB  tx_bytes=512 B" in line for line in lines)
    assert "p  pause   r  resume   o  powerdown   b  reset   q  detach" in out


def test_counters_become_rates_between_polls() -> None:
    first = builtin_view(now=100.0)
    stats = {
        **STATS,
        "devices": [
            {"id": "rootfs", "kind": "blk", "counters": {"reads": 170, "writes": 7}},
            {"id": "net0", "kind": "net", "counters": {"rx_bytes": 4096 + 2048, "tx_bytes": 512}},
        ],
        "vcpu-exits": [101, 2],
    }
    second = tui.view_from_replies(
        "web1", status={"status": "running"}, stats=stats, previous=first, now=102.0
    )
    assert second.devices is not None
    assert dict(second.devices[0].rates) == {"reads": 25.0}  # writes did not move: no rate
    assert dict(second.devices[1].rates) == {"rx_bytes": 1024.0}
    assert second.vcpu_exits == 103 and second.vcpu_exit_rate == 50.0
    out = render_text(second)
    assert "reads=170 (+25/s)  writes=7" in out
    assert "rx_bytes=6.0 KiB (+1.0 KiB/s)" in out
    assert "exits 103 (+50/s)" in out


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
    assert "exits" not in out


def test_events_drive_state_and_the_log_is_bounded() -> None:
    view = builtin_view()
    view = tui.apply_event(view, "STOP", {}, 1_700_000_000, 5000)
    assert view.state == "paused"
    view = tui.apply_event(view, "BALLOON_CHANGED", {"actual": 128 << 20}, 1_700_000_001, 0)
    assert view.balloon == 128 << 20
    for i in range(100):
        view = tui.apply_event(view, "RESUME" if i % 2 else "STOP", {}, 1_700_000_002 + i, 0)
    assert len(view.events) == tui.MAX_EVENTS
    assert view.state == "running"
    out = render_text(view)
    assert "│ state   running" in out
    assert out.count("RESUME") + out.count("STOP") == tui_render.DEFAULT_ROWS
    assert not tui.saw_shutdown(view)
    assert tui.saw_shutdown(tui.apply_event(view, "SHUTDOWN", None, 0, 0))
    reset = tui.apply_event(view, "RESET", None, 0, 0)
    assert tui.saw_shutdown(reset)  # the last word: the VM stopped on reset
    assert not tui.saw_shutdown(tui.apply_event(reset, "STOP", None, 0, 0))  # QEMU reboots


def test_views_are_immutable_values() -> None:
    a = builtin_view()
    b = tui.apply_event(a, "STOP", {}, 0, 0)
    assert a.state == "running" and b.state == "paused"
    assert a.events == () and len(b.events) == 1


def test_serial_tail_keeps_complete_lines_and_strips_escapes() -> None:
    view = tui.VmView("x")
    view, rest = tui.add_serial(view, "", b"Linux version 6.1\r\nlog")
    assert view.serial == ("Linux version 6.1",) and rest == "log"
    view, rest = tui.add_serial(view, rest, b"in: \x1b[1mroot\x1b[0m\x1b(B\n")
    assert view.serial[-1] == "login: root"
    for i in range(300):
        view, rest = tui.add_serial(view, rest, f"line {i}\n".encode())
    assert len(view.serial) == tui.MAX_SERIAL_LINES
    out = render_text(view)
    assert "line 299" in out and "line 291" not in out  # the newest DEFAULT_ROWS lines


def test_message_line() -> None:
    out = render_text(tui.with_message(builtin_view(), "pause: GenericError"))
    assert "pause: GenericError" in out


def busy_view(devices: int = 2, events: int = 30, serial: int = 100) -> tui.VmView:
    stats = {
        **STATS,
        "devices": [
            {"id": f"disk{i}", "kind": "blk", "counters": {"reads": i, "writes": 2 * i}}
            for i in range(devices)
        ],
    }
    view = builtin_view()
    view = tui.view_from_replies("web1", status={"status": "running"}, stats=stats, previous=view)
    for i in range(events):
        view = tui.apply_event(view, "BALLOON_CHANGED", {"actual": i << 20}, 1_700_000_000 + i, 0)
    for i in range(serial):
        view, _ = tui.add_serial(view, "", f"serial line {i} ".encode() + b"x" * 200 + b"\n")
    return view


def test_the_screen_fits_80_by_24_exactly() -> None:
    """A busy VM on a small terminal: nothing wraps, the key help is on the last-but-one row."""
    out = render_text(busy_view(devices=10), width=80, height=24)
    lines = out.splitlines()
    assert len(lines) == 24, out
    assert all(len(line) <= 80 for line in lines), out
    assert lines[-2].startswith(" p  pause"), out
    assert "│ VM      web1" in out and "│ state   running" in out
    assert "serial line 99 xxx" in out and "…" in out  # the newest line, cut, not wrapped
    assert "+" in out and "more" in out  # ten devices do not fit: the rest are counted


def test_spare_rows_go_to_the_serial_tail() -> None:
    view = busy_view(devices=2, events=3)
    short = render_text(view, width=120, height=30)
    tall = render_text(view, width=120, height=50)
    assert len(short.splitlines()) == 30 and len(tall.splitlines()) == 50
    assert short.count("serial line") < tall.count("serial line")
    assert tall.count("BALLOON_CHANGED") == 3  # the log shows all it has, the tail the rest
    assert tall.splitlines()[-2].startswith(" p  pause")


def test_keys_of_terminal_input() -> None:
    assert tui.keys_of(b"pR") == ["p", "r"]
    assert tui.keys_of(b"\x1b[B\x1b[A\x1bOB") == []  # arrows (Down ends in 'B') are no keys
    assert tui.keys_of(b"\x1b[1;5Bq") == ["q"]
    assert tui.keys_of(b"\x03\x7fo") == ["o"]


def test_a_long_name_is_cut_not_the_labels() -> None:
    """QEMU without -name: the title is the socket path; the label column keeps its width."""
    name = "/tmp/pytest-of-root/pytest-254/test_top_pauses_and_resumes_re0/" + "x" * 60
    out = render_text(tui.view_from_replies(name, status={"status": "prelaunch"}), height=24)
    assert "│ state   prelaunch" in out and "│ memory  -" in out
    assert "│ VM      /tmp/pytest-of-root/" in out and "…" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_a_server_without_statistics_fills_the_screen_too() -> None:
    """The one-line note in the device panel: the layout still ends on the terminal's last row."""
    view = tui.view_from_replies("qemu", status={"status": "prelaunch"}, stats=None)
    lines = render_text(view, width=80, height=24).splitlines()
    assert len(lines) == 24 and lines[-2].startswith(" p  pause")


def test_top_without_a_terminal_is_one_clear_error(tmp_path: Path) -> None:
    """Piped, the dashboard would draw nothing and never end: refuse, and point to the tools."""
    run = tmp_path / "run"
    env = dict(os.environ, SVLAUNCH_RUNTIME_DIR=str(run))
    for name in ("vmlinux", "initrd"):
        (tmp_path / name).write_bytes(bytes(4096))
    manifest = tmp_path / "vm.toml"
    manifest.write_text(
        'name = "piped"\nserial = "stdio"\n[boot]\nkernel = "vmlinux"\ninitrd = "initrd"\n'
    )
    for args in (["top"], ["top", "web1"], ["up", "--tui", str(manifest)]):
        p = subprocess.run(
            [sys.executable, "-m", "launcher.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 2, p.stderr
        assert "needs a terminal (its standard output is not one)" in p.stderr
        assert "svlaunch status NAME" in p.stderr and "Traceback" not in p.stderr
    assert not run.exists() or not list(run.iterdir())  # no engine was started, no state left
