"""`svlaunch top` in a real terminal (tmux) against a real QEMU QMP endpoint.

QEMU runs ``-machine none -S``: no guest, but a real QMP server with real lifecycle states. The
test presses the TUI's keys and reads the screen with ``tmux capture-pane``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tmux import TMUX, Tmux

from launcher.qmpclient import QmpClient

ROOT = Path(__file__).resolve().parents[2]
QEMU = shutil.which("qemu-system-x86_64")

pytestmark = pytest.mark.skipif(
    not (QEMU and TMUX), reason="needs qemu-system-x86_64 and tmux (scripts/host-deps)"
)


@dataclass
class Qemu:
    sock: str
    proc: subprocess.Popen[bytes]


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Qemu]:
    """QEMU with no guest, stopped (``-S``); ``-no-reboot``: a reset ends it, as a microVM."""
    sock = tmp_path / "qemu.sock"
    proc = subprocess.Popen(
        [
            *(QEMU or "qemu-system-x86_64", "-machine", "none", "-S", "-no-reboot"),
            *("-display", "none", "-nodefaults", "-qmp", f"unix:{sock},server,nowait"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"QEMU did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    yield Qemu(str(sock), proc)
    proc.kill()
    proc.wait()


def qemu_status(sock: str) -> str:
    with QmpClient.connect(sock) as c:
        return c.execute("query-status")["status"]


def top(qemu: Qemu) -> str:
    return f'cd {ROOT} && {sys.executable} -m launcher.cli top --qmp unix:{qemu.sock}; echo "top exited $?"; sleep 600'


def test_top_pauses_and_resumes_real_qemu(qemu: Qemu, tmux: Tmux) -> None:
    tmux.start(top(qemu))
    screen = tmux.wait_for("state   prelaunch", "q  detach")
    assert "statistics not offered by this QMP server" in screen
    assert "QEMU 7." in screen or "QEMU " in screen

    tmux.keys("r")
    screen = tmux.wait_for("state   running", "RESUME")

    tmux.keys("p")
    screen = tmux.wait_for("state   paused", "STOP")
    # (QEMU serves one QMP client per socket: ask it only after the TUI has let go.)

    tmux.keys("q")
    screen = tmux.wait_for("top exited 0").replace("\n", "")  # (long lines wrap)
    assert "detached; the VM keeps running" in screen
    assert qemu_status(qemu.sock) == "paused"  # detaching leaves the VM as it is


def test_top_on_real_qemu_at_80x24_ends_with_it(qemu: Qemu, tmux: Tmux) -> None:
    """A reset under -no-reboot: QEMU says SHUTDOWN and quits; top exits 0, no traceback."""
    tmux.start(top(qemu), width=80, height=24)

    def fits(screen: str) -> bool:
        """The whole frame is drawn (a capture can catch it half-painted) and fits 80 columns."""
        lines = screen.splitlines()
        drawn = "state   prelaunch" in screen and "q  detach" in screen
        return drawn and len(lines) > 2 and lines[-2].startswith(" p  pause")

    screen = tmux.wait_until(fits, "the whole frame", 15.0)
    assert all(len(line) <= 80 for line in screen.splitlines()), screen
    tmux.keys("b")
    tmux.wait_for("reset? press b again to confirm")
    tmux.keys("b")
    screen = tmux.wait_for("top exited 0").replace("\n", "")  # (long lines wrap)
    assert "SHUTDOWN" in screen and "state   shutdown" in screen, screen
    assert "the VM shut down" in screen and "Traceback" not in screen, screen
    assert qemu.proc.wait(10) == 0


def test_top_says_a_killed_qemu_is_gone(qemu: Qemu, tmux: Tmux) -> None:
    tmux.start(top(qemu), width=80, height=24)
    tmux.wait_for("state   prelaunch", "q  detach")
    qemu.proc.kill()
    screen = tmux.wait_for("top exited 1").replace("\n", "")  # (long lines wrap)
    assert "state   gone" in screen and "is gone: QMP" in screen, screen
    assert "Traceback" not in screen, screen
