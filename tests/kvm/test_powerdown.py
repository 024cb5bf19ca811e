"""``system_powerdown`` on host KVM: the power button reaches a tiny guest, which powers off.

The tiny guest has no IDT, so instead of taking the GED's interrupt it polls the GED's
event-status port (what Linux's ``_EVT`` reads) and, on the power-button bit, writes S5 to the
PM port, as Linux does after its button driver reports KEY_POWER. The Linux path (interrupt,
``_EVT``, ``PNP0C0C``) is tests/rig/test_rig_powerdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu.qmp import QMPClient
from tiny_guest import HANG, make_plan, poweroff, say, wait_for_power_button, write_guest

from engine.vm import Vm

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[2]


#: "waiting", then poll until the power button, then "pressed" and S5 through the PM port.
BUTTON_GUEST = say(b"waiting\n") + wait_for_power_button() + say(b"pressed\n") + poweroff()


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict | None]] = []

    def emit(self, name: str, data: dict | None = None) -> None:
        self.events.append((name, data))


def wait_output(vm: Vm, serial: Path, text: bytes, timeout: float = 20.0) -> None:
    """Serve the VM's loop until ``text`` is on its serial file."""
    end = time.monotonic() + timeout
    while text not in (serial.read_bytes() if serial.exists() else b""):
        assert time.monotonic() < end, f"guest never printed {text!r}"
        assert vm.wait(0.05) is None, f"VM stopped early: {vm.stop_reason}"


def test_powerdown_reaches_the_guest_and_it_powers_off(tmp_path: Path) -> None:
    serial = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, BUTTON_GUEST), serial_file=serial)
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start()
    try:
        wait_output(vm, serial, b"waiting\n")
        assert vm.wait(0.3) is None  # nothing pressed: the guest keeps polling
        vm.powerdown()
        assert vm.wait(20) == 0
    finally:
        vm.close()
    assert serial.read_bytes() == b"waiting\npressed\n"
    names = [n for n, _ in ev.events]
    assert names == ["POWERDOWN", "SHUTDOWN"]
    assert ev.events[1] == ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    assert "S5" in vm.stop_reason


def test_the_powerdown_event_goes_out_before_the_guest_can_see_the_button(tmp_path: Path) -> None:
    """A guest that powers off at once must not get its SHUTDOWN ahead of the POWERDOWN."""
    plan = make_plan(write_guest(tmp_path, say(b"x") + HANG), serial_file=tmp_path / "s")
    seen: list[int] = []

    class Watch(Events):
        def emit(self, name: str, data: dict | None = None) -> None:
            if name == "POWERDOWN":
                assert vm.machine is not None and vm.machine.devices.ged is not None
                seen.append(vm.machine.devices.ged.pending)
            super().emit(name, data)

    vm = Vm(plan, sink=Watch())
    vm.start()
    try:
        vm.powerdown()
        vm.quit()
        assert vm.wait(5) == 0
    finally:
        vm.close()
    assert seen == [0]  # not yet pressed when the event was sent


def test_a_guest_that_ignores_the_button_keeps_running(tmp_path: Path) -> None:
    plan = make_plan(write_guest(tmp_path, say(b"x") + HANG), serial_file=tmp_path / "s")
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start()
    try:
        vm.powerdown()
        assert vm.wait(0.5) is None
        assert vm.status().value == "running"
        assert vm.machine is not None and vm.machine.devices.ged is not None
        assert vm.machine.devices.ged.pending == 1  # latched, never read
        vm.quit()
        assert vm.wait(5) == 0
    finally:
        vm.close()
    assert ("POWERDOWN", None) in ev.events


def test_powerdown_while_paused_is_seen_after_resume(tmp_path: Path) -> None:
    serial = tmp_path / "serial"
    plan = make_plan(write_guest(tmp_path, BUTTON_GUEST), cpus=2, serial_file=serial)
    vm = Vm(plan, sink=Events())
    vm.start(paused=True)
    try:
        vm.powerdown()
        assert vm.wait(0.3) is None and serial.read_bytes() == b""
        vm.resume()
        assert vm.wait(20) == 0
    finally:
        vm.close()
    assert serial.read_bytes() == b"waiting\npressed\n"


def test_powerdown_after_the_vm_stopped_is_refused(tmp_path: Path) -> None:
    from engine.qmp.control import QmpError

    plan = make_plan(write_guest(tmp_path, poweroff()), serial_file=tmp_path / "s")
    vm = Vm(plan, sink=Events())
    vm.start()
    try:
        assert vm.wait(20) == 0
        with pytest.raises(QmpError):
            vm.powerdown()
    finally:
        vm.close()


def test_qmp_system_powerdown_in_the_engine_process(tmp_path: Path) -> None:
    """The user's path: a QMP client sends system_powerdown, sees POWERDOWN, the engine exits 0."""
    serial = tmp_path / "serial"
    qmp = tmp_path / "qmp.sock"
    plan = make_plan(write_guest(tmp_path, BUTTON_GUEST), serial_file=serial)
    plan = dataclasses.replace(plan, name="powerdown", qmp=(str(qmp),))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.dumps())
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--plan", str(plan_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not qmp.exists() or b"waiting" not in serial.read_bytes():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "engine never served QMP / guest never waited"
            time.sleep(0.05)

        async def go() -> list[dict]:
            q = QMPClient("powerdown-test")
            await q.connect(str(qmp))
            seen = []
            with q.listener(("POWERDOWN", "SHUTDOWN")) as listener:
                await q.execute("system_powerdown")
                seen.append(await asyncio.wait_for(listener.get(), 20))
                seen.append(await asyncio.wait_for(listener.get(), 20))
            with contextlib.suppress(EOFError, ConnectionError):
                await q.disconnect()  # the engine may already have closed the socket
            return seen

        events = asyncio.run(go())
        assert [e["event"] for e in events] == ["POWERDOWN", "SHUTDOWN"]
        assert events[1]["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert serial.read_bytes() == b"waiting\npressed\n"


def test_svlaunch_down_powers_the_guest_off_end_to_end(tmp_path: Path) -> None:
    """``up -d``, console, ps, status, events and ``down`` from the CLI, on host KVM."""
    from powerdown_driver import check_clean_powerdown, parse

    kernel = write_guest(tmp_path, BUTTON_GUEST)
    manifest = tmp_path / "vm.toml"
    initrd = tmp_path / "initrd"  # the launcher insists on a root file system; unused
    initrd.write_bytes(bytes(4096))
    manifest.write_text(
        'name = "pd-tiny"\nserial = "stdio"\n[memory]\nsize = "128M"\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "console=ttyS0"\n'
    )
    env = dict(os.environ, SVLAUNCH_RUNTIME_DIR=str(tmp_path / "run"), PYTHONPATH=str(ROOT))
    driver = Path(__file__).parents[1] / "support" / "powerdown_driver.py"
    args = ["--name", "pd-tiny", "--manifest", str(manifest), "--wait-text", "waiting\n"]
    p = subprocess.run(
        [sys.executable, str(driver), *args, "--paused", "--timeout", "60", "--down-timeout", "30"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    explain = f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert p.returncode == 0, explain
    steps, console = parse(p.stdout)
    check_clean_powerdown(steps, "pd-tiny", explain)
    assert console.endswith("waiting\npressed\n"), explain
