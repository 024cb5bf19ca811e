"""`svlaunch up` in the foreground relays the guest's console: every byte, in order, to a pipe
and to a real terminal (tmux), the last partial line included (written out at power-off)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lifecycle import ROOT, manifest
from tiny_guest import flood_pattern, uart_flood
from tmux import TMUX, Tmux

pytestmark = pytest.mark.kvm


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}


def test_up_relays_a_console_flood_byte_for_byte(tmp_path: Path, env) -> None:
    count = 100_003  # not a whole number of lines: the tail goes out at power-off
    vm = manifest(tmp_path, "flood", uart_flood(count))
    res = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "up", str(vm)],
        cwd=ROOT,
        env=env,
        input=b"",
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stdout == flood_pattern(count)
    assert not (tmp_path / "rt" / "flood").exists()


@pytest.mark.skipif(not TMUX, reason="needs tmux (scripts/host-deps)")
def test_up_relays_a_console_flood_to_a_terminal(tmp_path: Path, env) -> None:
    line = b"svlaunch console flood, one line of many\r\n"
    count = len(line) * 2000 + 9  # ends with a partial line: "svlaunch "
    vm = manifest(tmp_path, "tflood", uart_flood(count, line))
    tmux = Tmux("tflood", tmp_path / "tmux.sock")
    shell_env = " ".join(f"{k}={v}" for k, v in env.items() if k == "SVLAUNCH_RUNTIME_DIR")
    cmd = f"cd {ROOT} && env {shell_env} {sys.executable} -m launcher.cli up {vm}"
    tmux.start(f"sh -c '{cmd}; echo EXITED=$?; stty -a | grep -o -- -icanon; sleep 60'")
    try:
        screen = tmux.wait_for("EXITED=", timeout=120)
        assert "svlaunch EXITED=0" in screen, screen  # the partial line, then the shell's echo
        assert screen.count("one line of many") >= 30
        assert "-icanon" not in screen, "the terminal was left in raw mode"
    finally:
        tmux.kill()
