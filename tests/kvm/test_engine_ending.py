"""How a VM ended, on the host's KVM with tiny guests: the pvpanic device and the panic actions,
each way of stopping with its own ``SHUTDOWN`` reason, exit code and exit record, in process
(``engine.vm.Vm``) and through the engine process (``--exit-fd``)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_guest import (
    HANG,
    SAY_PVPANIC_EVENTS,
    SPIN_SAY_X,
    UD2,
    make_plan,
    poweroff,
    pvpanic_event,
    reset,
    say,
    write_guest,
)
from vmrun import Events, run_vm

from engine.ending import parse_record
from engine.plan import Plan, PvpanicPlan
from engine.qmp.control import QmpError
from engine.vm import Vm

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[2]
PANIC = pvpanic_event(1)
CRASH_LOADED = pvpanic_event(2)


def tiny(tmp: Path, code: bytes, on_panic: str | None = "poweroff") -> tuple[Plan, Path]:
    out = tmp / "serial"
    plan = make_plan(write_guest(tmp, code), serial_file=out)
    if on_panic is not None:
        plan = dataclasses.replace(plan, pvpanic=PvpanicPlan(on_panic))
    return plan, out


def test_a_panic_reported_through_pvpanic_stops_the_vm_as_guest_panic(tmp_path: Path) -> None:
    plan, out = tiny(tmp_path, SAY_PVPANIC_EVENTS + PANIC + say(b"!") + HANG)
    vm, code, ev = run_vm(plan)
    assert out.read_bytes()[:1] == b"3"  # the guest read PANICKED | CRASH_LOADED
    assert code == 7
    assert ev.events[-3:] == [
        ("GUEST_PANICKED", {"action": "poweroff"}),
        ("STOP", None),
        ("SHUTDOWN", {"guest": True, "reason": "guest-panic"}),
    ]
    assert ev.names.count("SHUTDOWN") == 1
    assert vm.ending is not None and vm.ending.cause == "guest-panic" and vm.ending.panicked


def test_panic_action_pause_keeps_the_vm_paused_until_quit(tmp_path: Path) -> None:
    plan, out = tiny(tmp_path, PANIC + SPIN_SAY_X, on_panic="pause")
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start()
    try:
        assert vm.wait(1.0) is None  # paused, not stopped
        assert vm.status().value == "guest-panicked"
        size = out.stat().st_size
        assert vm.wait(0.5) is None
        assert out.stat().st_size == size  # the spinning guest really is stopped
        with pytest.raises(QmpError, match="Resetting the Virtual Machine is required"):
            vm.resume()
        with pytest.raises(QmpError):
            vm.pause()
        vm.quit()
        assert vm.wait(5) == 0
    finally:
        vm.close()
    assert ev.events[:2] == [("GUEST_PANICKED", {"action": "pause"}), ("STOP", None)]
    assert vm.ending is not None and vm.ending.cause == "host-qmp-quit" and vm.ending.panicked


def test_panic_action_pause_then_system_reset_ends_it(tmp_path: Path) -> None:
    plan, _ = tiny(tmp_path, PANIC + HANG, on_panic="pause")
    vm = Vm(plan, sink=Events())
    vm.start()
    try:
        assert vm.wait(1.0) is None and vm.status().value == "guest-panicked"
        vm.reset()
        assert vm.wait(5) == 5
    finally:
        vm.close()


def test_panic_action_run_only_reports_and_the_guest_goes_on(tmp_path: Path) -> None:
    plan, out = tiny(tmp_path, PANIC + say(b"still here") + poweroff(), on_panic="run")
    vm, code, ev = run_vm(plan)
    assert code == 0 and out.read_bytes() == b"still here"
    assert ev.events == [
        ("GUEST_PANICKED", {"action": "run"}),
        ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}),
    ]
    assert vm.ending is not None and vm.ending.panicked  # the record still says it panicked


def test_crash_loaded_is_only_an_event(tmp_path: Path) -> None:
    plan, _ = tiny(tmp_path, CRASH_LOADED + reset())
    vm, code, ev = run_vm(plan)
    assert code == 4  # the crash kernel's reboot ends a microVM
    assert ev.events[0] == ("GUEST_CRASHLOADED", {"action": "run"})
    assert vm.ending is not None and vm.ending.crash_loaded and not vm.ending.panicked


def test_without_pvpanic_in_the_plan_the_port_is_nothing(tmp_path: Path) -> None:
    plan, _ = tiny(tmp_path, PANIC + poweroff(), on_panic=None)
    vm, code, ev = run_vm(plan)
    assert code == 0 and ev.names == ["SHUTDOWN"]
    assert vm.ending is not None and not vm.ending.panicked


# -- the engine process: exit code and exit record -------------------------------------------


def run_engine(tmp: Path, plan: Plan, *, act=None) -> tuple[int, dict, str]:
    """``python -m engine run --plan F --exit-fd N``; ``act(proc)`` runs once the guest prints."""
    pf = tmp / "plan.json"
    pf.write_text(plan.dumps())
    rec = tmp / "exit.json"
    fd = os.open(rec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "--plan", str(pf), "--exit-fd", str(fd)],
            cwd=ROOT,
            pass_fds=(fd,),
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(fd)
    if act is not None:
        serial = Path(plan.serial.chardev.path)  # type: ignore[union-attr, arg-type]
        deadline = time.monotonic() + 30
        while not (serial.exists() and serial.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.02)
        act(proc)
    _, err = proc.communicate(timeout=60)
    parsed = parse_record(rec.read_bytes())
    assert parsed is not None, rec.read_bytes()
    return proc.returncode, parsed, err


@pytest.mark.parametrize(
    ("code", "want"),
    [
        (poweroff(), (0, "guest-shutdown", True)),
        (reset(), (4, "guest-reset", True)),
        (UD2, (6, "guest-triple-fault", True)),
        (PANIC + HANG, (7, "guest-panic", True)),
    ],
    ids=["poweroff", "reset", "triple-fault", "panic"],
)
def test_each_end_has_its_exit_code_and_record(tmp_path: Path, code: bytes, want: tuple) -> None:
    plan, _ = tiny(tmp_path, code)
    rc, rec, err = run_engine(tmp_path, plan)
    assert (rc, rec["cause"], rec["guest"]) == want, err
    assert rec["code"] == rc and rec["signal"] is None
    assert rec["panicked"] is (want[1] == "guest-panic")
    assert rec["started"] is not None and rec["started"] <= rec["ended"]
    assert f"ended: {want[1]}" in err  # the engine log says it too


def test_sigterm_is_a_requested_stop(tmp_path: Path) -> None:
    plan, _ = tiny(tmp_path, SPIN_SAY_X)
    rc, rec, err = run_engine(tmp_path, plan, act=lambda p: p.send_signal(signal.SIGTERM))
    assert (rc, rec["cause"], rec["guest"], rec["reason"]) == (
        0,
        "host-signal",
        False,
        "SIGTERM received",
    ), err


def test_a_plan_the_engine_cannot_read_is_a_host_error_record(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text('{"version": 99}')
    rec = tmp_path / "exit.json"
    fd = os.open(rec, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "engine", "run", "--plan", str(bad), "--exit-fd", str(fd)],
            cwd=ROOT,
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(fd)
    got = json.loads(rec.read_text())
    assert p.returncode == 1 and (got["code"], got["cause"], got["started"]) == (
        1,
        "host-error",
        None,
    )
