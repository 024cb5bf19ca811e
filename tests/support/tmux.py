"""A tmux server of a test's own, for driving the TUI in a real terminal."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")


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
