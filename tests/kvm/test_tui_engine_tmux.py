"""``svlaunch top`` and ``svlaunch up --tui`` in a real terminal (tmux) on the builtin engine.

The VM is a tiny guest on this host's KVM (tests/support/tiny_guest.py) with a virtio-blk drive on a temp
file and a virtio-rng, started from a manifest through the CLI as a user would. The tests press
the TUI's keys with ``tmux send-keys`` and read the screen with ``tmux capture-pane``; each pane
runs ``svlaunch ...; echo "<tag> exited $?"`` so the exit status is on the screen too.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_guest import HANG, poweroff, say, wait_for_power_button, write_guest
from tmux import TMUX, Tmux

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not TMUX, reason="needs tmux (scripts/host-deps)"),
]

LINES = (b"tiny guest: hello\n", b"tiny guest: devices disk0 rng0\n", b"tiny guest: idle\n")
#: three lines on COM1, then halt for good (no interrupts: the vCPU sleeps, the VM runs on)
IDLE_GUEST = b"".join(say(line) for line in LINES) + HANG
#: three lines, then poll the power button; on a press say so and power off (S5)
BUTTON_GUEST = (
    b"".join(say(line) for line in LINES)
    + wait_for_power_button()
    + say(b"tiny guest: power button\n")
    + poweroff()
)


@dataclass
class Vm:
    """A manifest for one tiny guest and the CLI to run it, in its own runtime dir."""

    name: str
    manifest: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "launcher.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def shell(self, *args: str, tag: str) -> str:
        """A pane command: run svlaunch, then print its exit status and keep the pane open."""
        env = f"SVLAUNCH_RUNTIME_DIR={shlex.quote(self.env['SVLAUNCH_RUNTIME_DIR'])}"
        argv = shlex.join([sys.executable, "-m", "launcher.cli", *args])
        return f'cd {shlex.quote(str(ROOT))} && env {env} {argv}; echo "{tag} exited $?"; sleep 600'

    def status(self) -> str:
        p = self.cli("status", self.name)
        assert p.returncode == 0, p.stderr
        return next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("state"))

    def pid(self) -> int:
        p = self.cli("status", self.name)
        return int(
            next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("pid"))
        )

    def running(self) -> bool:
        return self.name in self.cli("ps").stdout


def make_vm(tmp_path: Path, code: bytes, name: str) -> Vm:
    kernel = write_guest(tmp_path, code)
    initrd = tmp_path / "initrd"  # the launcher insists on a root file system; unused
    initrd.write_bytes(bytes(4096))
    disk = tmp_path / "disk0.img"
    disk.write_bytes(bytes(1 << 20))
    manifest = tmp_path / "vm.toml"
    manifest.write_text(
        f'name = "{name}"\nserial = "stdio"\n'
        '[cpu]\ncpus = 2\n[memory]\nsize = "128M"\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "console=ttyS0"\n'
        f'[drives.disk0]\nfile = "{disk}"\n'
        '[rngs.rng0]\nfile = "/dev/urandom"\n'
    )
    run_dir = tmp_path / "run"
    env = dict(os.environ, SVLAUNCH_RUNTIME_DIR=str(run_dir), PYTHONPATH=str(ROOT))
    return Vm(name, manifest, env)


@pytest.fixture
def idle_vm(tmp_path: Path) -> Iterator[Vm]:
    vm = make_vm(tmp_path, IDLE_GUEST, f"tui-idle-{os.getpid()}")
    yield vm
    if vm.running():
        vm.cli("down", "--force", vm.name)


@pytest.fixture
def button_vm(tmp_path: Path) -> Iterator[Vm]:
    vm = make_vm(tmp_path, BUTTON_GUEST, f"tui-button-{os.getpid()}")
    yield vm
    if vm.running():
        vm.cli("down", "--force", vm.name)


def start_paused(vm: Vm) -> None:
    """``up -d --paused``: the guest's first lines wait for the TUI's serial connection."""
    p = vm.cli("up", "-d", "--paused", str(vm.manifest))
    assert p.returncode == 0, p.stdout + p.stderr
    assert vm.status() == "prelaunch"  # built, never run (QEMU's word for -S)


def assert_dashboard(screen: str, vm: Vm) -> None:
    """What every screen of this VM shows: name, vCPUs, memory, devices, serial tail, keys."""
    assert f"VM      {vm.name}" in screen, screen
    assert "vCPUs   2 (threads " in screen, screen
    assert "memory  128 MiB" in screen, screen
    assert "device" in screen and "kind" in screen and "counters" in screen, screen
    rows = [line for line in screen.splitlines() if "disk0" in line or "rng0" in line]
    assert any("disk0" in r and " blk " in r for r in rows), screen
    assert any("rng0" in r and " rng " in r for r in rows), screen
    for line in LINES:
        assert line.decode().strip() in screen, screen
    assert "p  pause   r  resume   o  powerdown   b  reset   q  detach" in screen, screen
    assert "StratoVirt-compatible" in screen, screen
    assert "Traceback" not in screen, screen


def test_top_drives_a_builtin_engine_vm(idle_vm: Vm, tmux: Tmux) -> None:
    vm = idle_vm
    start_paused(vm)
    tmux.start(vm.shell("top", vm.name, tag="top"), width=120, height=40)
    tmux.wait_for("state   prelaunch", "disk0", "q  detach")

    tmux.keys("r")  # the guest starts and prints to the TUI's serial connection
    screen = tmux.wait_for("state   running", "RESUME", LINES[-1].decode().strip())
    assert_dashboard(screen, vm)
    assert "resume: ok" in screen
    assert vm.status() == "running"

    tmux.keys("p")
    screen = tmux.wait_for("state   paused", "STOP")
    assert vm.status() == "paused"  # the engine serves the CLI beside the TUI
    assert_dashboard(screen, vm)

    tmux.keys("r")
    screen = tmux.wait_for("state   running")
    tmux.wait_for_count("RESUME", 2)
    assert vm.status() == "running"

    tmux.keys("q")
    screen = tmux.wait_for("top exited 0")
    assert f"{vm.name}: detached; the VM keeps running" in screen
    assert "Traceback" not in screen
    assert vm.status() == "running"  # detaching leaves the VM as it is

    p = vm.cli("down", "--timeout", "1", vm.name)  # the idle guest ignores the power button
    assert p.returncode == 0, p.stdout + p.stderr
    assert not vm.running()


def test_top_says_the_vm_is_gone_when_its_engine_is_killed(idle_vm: Vm, tmux: Tmux) -> None:
    vm = idle_vm
    start_paused(vm)
    tmux.start(vm.shell("top", vm.name, tag="top"), width=80, height=24)
    tmux.wait_for("state   prelaunch", "q  detach")
    tmux.keys("r")
    tmux.wait_for("state   running", LINES[-1].decode().strip())

    os.kill(vm.pid(), 9)
    screen = tmux.wait_for("top exited 1")
    assert "state   gone" in screen  # the last screen stays, marked
    assert f"svlaunch: VM '{vm.name}' is gone" in screen, screen
    assert "Traceback" not in screen, screen
    assert "q  detach" not in screen  # the key help is gone with the TUI


def test_top_reset_asks_twice_and_ends_with_the_vm(idle_vm: Vm, tmux: Tmux) -> None:
    """A microVM stops on reset: a stray ``b`` must not do it, and the end is a clean exit."""
    vm = idle_vm
    start_paused(vm)
    tmux.start(vm.shell("top", vm.name, tag="top"), width=100, height=30)
    tmux.wait_for("state   prelaunch", "q  detach")
    tmux.keys("Down", "b")  # an arrow key's escape sequence ends in 'B': not a key press
    screen = tmux.wait_for("reset? press b again to confirm")
    time.sleep(0.5)
    assert vm.status() == "prelaunch"
    tmux.keys("b")
    screen = tmux.wait_for("top exited 0")
    assert "RESET" in screen and "state   shutdown" in screen, screen
    assert f"{vm.name}: the VM shut down" in screen, screen
    assert "Traceback" not in screen, screen


def test_up_tui_shows_the_vm_and_ends_on_powerdown(button_vm: Vm, tmux: Tmux) -> None:
    """The foreground mode at 80x24: the same screen; the guest powers off, ``up`` exits 0."""
    vm = button_vm
    tmux.start(vm.shell("up", "--tui", str(vm.manifest), tag="up"), width=80, height=24)
    screen = tmux.wait_for("state   running", LINES[-1].decode().strip(), "q  detach", timeout=30)
    assert_dashboard(screen, vm)
    assert all(len(line) <= 80 for line in screen.splitlines())
    assert vm.status() == "running"

    tmux.keys("o")
    screen = tmux.wait_for("up exited 0", timeout=30)
    assert "POWERDOWN" in screen and "SHUTDOWN" in screen, screen
    assert "tiny guest: power button" in screen, screen
    assert "state   shutdown" in screen, screen
    assert "detached" not in screen and "Traceback" not in screen, screen
    assert not vm.running()


def test_up_tui_detach_leaves_the_vm_running(idle_vm: Vm, tmux: Tmux) -> None:
    vm = idle_vm
    tmux.start(vm.shell("up", "--tui", str(vm.manifest), tag="up"), width=120, height=40)
    screen = tmux.wait_for("state   running", LINES[-1].decode().strip(), timeout=30)
    assert_dashboard(screen, vm)
    tmux.keys("q")
    screen = tmux.wait_for("up exited 0")
    assert f"{vm.name}: detached; the VM keeps running" in screen, screen
    assert vm.status() == "running"
    p = vm.cli("down", "--timeout", "1", vm.name)
    assert p.returncode == 0, p.stdout + p.stderr


def test_top_follows_a_resize_and_ctrl_c_leaves_the_vm(idle_vm: Vm, tmux: Tmux) -> None:
    vm = idle_vm
    start_paused(vm)
    tmux.start(vm.shell("top", vm.name, tag="top"), width=120, height=40)
    screen = tmux.wait_for("state   prelaunch", "q  detach")
    assert max(len(line) for line in screen.splitlines()) == 120

    tmux.resize(80, 24)  # SIGWINCH: laid out again for 80x24, the key help still on screen
    screen = tmux.wait_until(
        lambda s: s.splitlines()[0].endswith("╮") and len(s.splitlines()[0]) == 80,
        "an 80-column screen",
        10,
    )
    assert "q  detach" in screen and "state   prelaunch" in screen, screen
    assert all(len(line) <= 80 for line in screen.splitlines()), screen

    tmux.keys("C-c")
    screen = tmux.wait_for("top exited 130")
    assert "svlaunch: interrupted" in screen and "Traceback" not in screen, screen
    assert vm.status() == "prelaunch"  # Ctrl-C leaves top, not the VM


def test_top_says_when_another_client_holds_the_serial_console(idle_vm: Vm, tmux: Tmux) -> None:
    vm = idle_vm
    start_paused(vm)
    console = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "console", vm.name],
        cwd=ROOT,
        env=vm.env,
        stdin=subprocess.PIPE,  # kept open: the console stays attached
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(1.0)  # the engine has accepted the console's connection
        assert console.poll() is None
        tmux.start(vm.shell("top", vm.name, tag="top"), width=100, height=30)
        screen = tmux.wait_for("state   prelaunch", "q  detach")
        screen = tmux.wait_for("serial console in use by another client")
        assert "Traceback" not in screen
        tmux.keys("r")  # the guest's lines go to the client that holds the console
        tmux.wait_for("state   running")
        assert console.stdout is not None
        os.set_blocking(console.stdout.fileno(), False)
        got = b""
        deadline = time.monotonic() + 10
        while LINES[-1] not in got and time.monotonic() < deadline:
            got += console.stdout.read() or b""
            time.sleep(0.05)
        assert b"".join(LINES) in got
    finally:
        console.kill()
        console.wait()
