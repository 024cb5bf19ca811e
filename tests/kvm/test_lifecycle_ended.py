"""``svlaunch ps``/``status`` say how a VM ended, from its exit record (docs/lifecycle.md):
a tiny guest that panics through pvpanic, one that powers off, one SIGKILLed; through the exec
path and through the engine pool."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from lifecycle import manifest, svl, wait_gone
from poolutil import pool_env, start_pool, stop_everything
from tiny_guest import HANG, hello_poweroff, pvpanic_event, reset

from engine.ending import parse_record

pytestmark = pytest.mark.kvm
PANICS = pvpanic_event(1) + HANG


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}


def rows(env: dict[str, str], *flags: str) -> dict[str, dict]:
    res = svl(env, "ps", "--json", *flags)
    assert res.returncode == 0, res.stderr
    return {r["name"]: r for r in json.loads(res.stdout)}


def stopped_row(env: dict[str, str], name: str, timeout: float = 20.0) -> dict:
    """``ps -a``'s row of ``name`` once it says stopped: a killed engine's threads may hold its
    lock a moment after its main thread is a zombie (and ps rightly counts it as running)."""
    deadline = time.monotonic() + timeout
    while True:
        row = rows(env, "-a")[name]
        if row["state"] == "stopped" or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def panic_detached(tmp: Path, env: dict[str, str], name: str) -> None:
    """``up -d --paused`` a VM whose guest panics at once, ``cont``, wait until it is gone."""
    up = svl(env, "up", "-d", "--paused", str(manifest(tmp, name, PANICS, extra="[pvpanic]\n")))
    assert up.returncode == 0, up.stderr
    pid = rows(env)[name]["pid"]
    assert rows(env)[name]["ended"] is None  # no earlier run of this name
    assert svl(env, "qmp", name, "cont").returncode == 0
    assert wait_gone(pid)


def test_a_panicked_vm_is_listed_and_shown_as_guest_panic(tmp_path: Path, env) -> None:
    panic_detached(tmp_path, env, "crashy")
    row = stopped_row(env, "crashy")
    assert row["state"] == "stopped"
    assert "crashy" not in rows(env)  # gone: only -a lists it
    assert (row["ended"]["cause"], row["ended"]["code"]) == ("guest-panic", 7)
    assert row["ended"]["panicked"] is True and row["ended"]["guest"] is True
    text = svl(env, "ps", "-a").stdout
    assert "ENDED" in text.splitlines()[0] and "guest-panic (7)" in text

    rt = tmp_path / "rt"
    assert not (rt / "crashy").exists()
    assert parse_record((rt / "crashy.last.exit.json").read_bytes()) == row["ended"]

    st = svl(env, "status", "crashy", "--json")
    assert st.returncode == 0, st.stderr
    info = json.loads(st.stdout)
    assert info["state"] == "stopped" and info["ended"]["cause"] == "guest-panic"
    assert info["log"] == str(rt / "crashy.last.log")
    assert "ended: guest-panic" in Path(info["log"]).read_text()
    text = svl(env, "status", "crashy").stdout
    assert "guest-panic (7): the guest panicked, at " in text


def test_the_record_is_always_the_last_runs(tmp_path: Path, env) -> None:
    panic_detached(tmp_path, env, "again")
    # the same name again, in the foreground, powering off: its record replaces the panic's
    fg = svl(env, "up", str(manifest(tmp_path, "again", hello_poweroff(b"bye\n"))))
    assert fg.returncode == 0, fg.stderr
    info = json.loads(svl(env, "status", "again", "--json").stdout)
    assert (info["ended"]["cause"], info["ended"]["code"]) == ("guest-shutdown", 0)
    # a run that is SIGKILLed records nothing: the kept record says so, not the last one's end
    assert svl(env, "up", "-d", str(manifest(tmp_path, "again", HANG))).returncode == 0
    pid = rows(env)["again"]["pid"]
    assert rows(env)["again"]["ended"]["cause"] == "guest-shutdown"  # the previous run
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    ended = stopped_row(env, "again")["ended"]
    assert (ended["cause"], ended["code"]) == (None, None)
    assert "without recording how" in ended["reason"]
    assert "unrecorded" in svl(env, "ps", "-a").stdout


def test_a_foreground_panic_exits_with_its_code(tmp_path: Path, env) -> None:
    fg = svl(env, "up", str(manifest(tmp_path, "fgpanic", PANICS, extra="[pvpanic]\n")))
    assert fg.returncode == 7, fg.stderr
    assert "fgpanic: ended: guest-panic (7)" in fg.stderr


def test_a_foreground_guest_that_resets_at_once_is_not_a_start_failure(tmp_path, env) -> None:
    """Not paused (its serial is a file), it may end before QMP answers: up says how."""
    serial = f'[serial]\nbackend = "file"\npath = "{tmp_path / "s.log"}"\n'
    fg = svl(env, "up", str(manifest(tmp_path, "boots", reset(), extra=serial)))
    assert fg.returncode == 4, fg.stderr
    assert "boots: ended: guest-reset (4)" in fg.stderr
    assert "before its QMP socket answered" not in fg.stderr


def test_status_of_a_name_that_never_ran_is_still_an_error(env) -> None:
    res = svl(env, "status", "nobody")
    assert res.returncode == 1 and "no VM named 'nobody'" in res.stderr


def test_through_the_pool_the_forked_engine_records_the_panic(tmp_path: Path) -> None:
    env = pool_env(tmp_path)
    try:
        start_pool(env)
        panic_detached(tmp_path, env, "pooled")
        ended = stopped_row(env, "pooled")["ended"]
        assert (ended["cause"], ended["code"], ended["panicked"]) == ("guest-panic", 7, True)
        raw = json.loads((tmp_path / "rt" / "pooled.last.exit.json").read_text())
        assert raw["late_imports"] == []  # only a pool-forked engine writes this key
    finally:
        stop_everything(env)
