"""`svlaunch top` in a real terminal (tmux) against a real QEMU QMP endpoint.

QEMU runs ``-machine none -S``: no guest, but a real QMP server with real lifecycle states. The
test presses the TUI's keys and reads the screen with ``tmux capture-pane``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher.qmpclient import QmpClient

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-system-x86_64")
TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(
    not (QEMU and TMUX), reason="needs qemu-system-x86_64 and tmux (scripts/host-deps)"
)


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[str]:
    sock = tmp_path / "qemu.sock"
    proc = subprocess.Popen(
        [
            QEMU,
            "-machine",
            "none",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-qmp",
            f"unix:{sock},server,nowait",
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
    yield str(sock)
    proc.kill()
    proc.wait()


class Tmux:
    """One tmux server of the test's own (its socket in the test's temp dir), one pane."""

    def __init__(self, name: str, socket: Path) -> None:
        self.base = [TMUX or "tmux", "-S", str(socket)]
        self.target = name

    def start(self, command: str, width: int = 100, height: int = 40) -> None:
        size = ["-x", str(width), "-y", str(height)]
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", self.target, *size, command], check=True
        )

    def screen(self) -> str:
        """The visible pane and the lines scrolled off it (not the TUI's alternate screen)."""
        res = subprocess.run(
            [*self.base, "capture-pane", "-p", "-S", "-200", "-t", self.target],
            capture_output=True,
            text=True,
        )
        return res.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", self.target, *keys], check=True)

    def resize(self, width: int, height: int) -> None:
        subprocess.run(
            [*self.base, "resize-window", "-t", self.target, "-x", str(width), "-y", str(height)],
            check=True,
        )

    def alive(self) -> bool:
        res = subprocess.run([*self.base, "has-session", "-t", self.target], capture_output=True)
        return res.returncode == 0

    def wait_for(self, *needles: str, timeout: float = 15.0) -> str:
        return self.wait_until(lambda s: all(n in s for n in needles), repr(needles), timeout)

    def wait_for_count(self, needle: str, count: int, timeout: float = 15.0) -> str:
        return self.wait_until(lambda s: s.count(needle) >= count, f"{count}x {needle!r}", timeout)

    def wait_until(self, ok: Callable[[str], bool], what: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ok(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"screen never showed {what}; last screen:\n{screen}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux("svl-tui", tmp_path / "tmux.sock")
    yield t
    t.kill()


def qemu_status(sock: str) -> str:
    with QmpClient.connect(sock) as c:
        return c.execute("query-status")["status"]


def test_top_pauses_and_resumes_real_qemu(qemu: str, tmux: Tmux) -> None:
    tmux.start(f"cd {ROOT} && {sys.executable} -m launcher.cli top --qmp unix:{qemu}")
    screen = tmux.wait_for("state   prelaunch", "q  detach")
    assert "statistics not offered by this QMP server" in screen
    assert "QEMU 7." in screen or "QEMU " in screen

    tmux.keys("r")
    screen = tmux.wait_for("state   running", "RESUME")

    tmux.keys("p")
    screen = tmux.wait_for("state   paused", "STOP")
    # (QEMU serves one QMP client per socket: ask it only after the TUI has let go.)

    tmux.keys("q")
    deadline = time.monotonic() + 10
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tmux.alive(), "the TUI did not exit on 'q'"
    assert qemu_status(qemu) == "paused"  # detaching leaves the VM as it is
