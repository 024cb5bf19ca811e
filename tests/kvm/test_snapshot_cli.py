"""Snapshots the user's way: ``svlaunch snapshot``, ``svlaunch up --restore``, QMP ``migrate``
against the engine process, clones, the refusals and restore through the engine pool.

The guest is a tiny one of the tests' own: it says "a" on COM1, polls the ACPI power button,
says "b" and powers off. A snapshot taken while it polls must come back polling, so a restored
VM (or clone) says nothing until its power button is pressed, then "b".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from lifecycle import ROOT, manifest, svl, wait_gone
from poolutil import pool_env, start_pool, stop_everything
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError
from tiny_guest import make_plan, poweroff, say, wait_for_power_button, write_guest

from engine.snapshot.format import MEMORY_FILE, STATE_FILE

pytestmark = pytest.mark.kvm
BUTTON = say(b"a") + wait_for_power_button() + say(b"b") + poweroff()


@pytest.fixture
def env(tmp_path: Path) -> object:
    env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(tmp_path / "rt")}
    yield env
    stop_everything(env)  # a failing test leaves no VM running


def vm_manifest(tmp: Path, name: str, *, extra: str = "", top: str = "") -> tuple[Path, Path]:
    """A manifest of the button guest whose COM1 goes to a file: (manifest, serial file)."""
    out = tmp / f"{name}.serial"
    path = manifest(
        tmp, name, BUTTON, extra=f'[serial]\nbackend = "file"\npath = "{out}"\n{extra}', top=top
    )
    return path, out


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def template(tmp: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """Boot the template VM, snapshot it while it polls, kill its engine: (manifest, folder)."""
    tmpl, out = vm_manifest(tmp, "tmpl")
    assert svl(env, "up", "-d", str(tmpl)).returncode == 0
    wait_for(lambda: read(out) == b"a")
    folder = tmp / "snap"
    res = svl(env, "snapshot", "--leave-paused", "tmpl", str(folder))
    assert res.returncode == 0, res.stderr
    assert "tmpl: snapshot in" in res.stdout and "the VM is paused" in res.stdout
    assert sorted(os.listdir(folder)) == [MEMORY_FILE, STATE_FILE]
    pid = json.loads(svl(env, "ps", "--json").stdout)[0]["pid"]
    os.kill(pid, signal.SIGKILL)  # "the engine is killed": the files are all that is left
    assert wait_gone(pid)
    svl(env, "down", "tmpl", "--force", "--timeout", "1")  # clears the runtime folder
    return tmpl, folder


def test_snapshot_kill_restore_and_clones_through_the_cli(tmp_path: Path, env) -> None:
    _tmpl, folder = template(tmp_path, env)
    clones = []
    for i in (1, 2):
        path, out = vm_manifest(tmp_path, f"clone{i}")
        res = svl(env, "up", "-d", "--restore", str(folder), str(path))
        assert res.returncode == 0, res.stderr
        clones.append((f"clone{i}", out))
    rows = {r["name"]: r for r in json.loads(svl(env, "ps", "--json").stdout)}
    assert {rows[n]["state"] for n, _ in clones} == {"running"}
    time.sleep(0.2)
    for name, out in clones:
        assert read(out) == b"", f"{name} booted instead of going on where the snapshot was"
        status = json.loads(svl(env, "qmp", name, "query-status").stdout)
        assert status["status"] == "running"
        pid = rows[name]["pid"]
        assert svl(env, "qmp", name, "system_powerdown").returncode == 0
        wait_for(lambda out=out: read(out) == b"b")
        assert wait_gone(pid)
    assert json.loads(svl(env, "ps", "--json").stdout) == []


def test_restore_refusals_are_located_and_start_nothing(tmp_path: Path, env) -> None:
    tmpl, folder = template(tmp_path, env)
    # another memory size and a second vCPU: both named, at their keys
    text = (
        tmpl.read_text().replace('size = "128M"', 'size = "256M"').replace("cpus = 1", "cpus = 2")
    )
    other = tmp_path / "other.toml"
    other.write_text(text.replace('name = "tmpl"', 'name = "other"'))
    res = svl(env, "up", "-d", "--restore", str(folder), str(other))
    assert res.returncode == 1
    assert "guest RAM size: the snapshot has 134217728, this VM 268435456" in res.stderr
    assert "at memory.size" in res.stderr and "at cpu.cpus" in res.stderr
    assert "vCPU topology: the snapshot has cpus=1 maxcpus=1 cores=1, this VM cpus=2" in res.stderr
    assert f"{other}:" in res.stderr  # located in the file
    # what StratoVirt cannot snapshot, at its key
    balloon, _ = vm_manifest(tmp_path, "bal", extra="[balloon]\n")
    res = svl(env, "up", "-d", "--restore", str(folder), str(balloon))
    assert res.returncode == 1 and "snapshot-unsupported" not in res.stdout
    assert "balloon cannot be part of a VM restored from a snapshot" in res.stderr
    # a truncated state file, a corrupted one, a memory file from elsewhere
    ok, _ = vm_manifest(tmp_path, "ok")
    broken = tmp_path / "broken"
    for damage, words in (
        (lambda: (broken / STATE_FILE).write_bytes((folder / STATE_FILE).read_bytes()[:-7]),
         "is truncated"),
        (lambda: _flip(broken / STATE_FILE, -3), "is corrupted: its SHA-256 does not match"),
        (lambda: os.truncate(broken / MEMORY_FILE, 8192), "is truncated"),
        (lambda: _flip(broken / MEMORY_FILE, 30), "belongs to another snapshot"),
        (lambda: (broken / MEMORY_FILE).unlink(), "No such file"),
    ):  # fmt: skip
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(folder, broken)
        damage()
        res = svl(env, "up", "-d", "--restore", str(broken), str(ok))
        assert res.returncode == 1, res.stdout
        assert words in res.stderr, res.stderr
        assert "at incoming" in res.stderr
        assert json.loads(svl(env, "ps", "--json").stdout) == [], "no VM may start"


ENGINES: list[subprocess.Popen[str]] = []


def engine_proc(plan_path: Path, *args: str) -> subprocess.Popen[str]:
    """An engine process; one a failing test leaves running is killed at the test's end."""
    from engine.__main__ import engine_argv

    proc = subprocess.Popen(
        engine_argv(str(plan_path), *args), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ENGINES.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_engine_left() -> object:
    yield
    while ENGINES:
        proc = ENGINES.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def _qmp(path: str):
    from qemu.qmp.protocol import ConnectError

    for _ in range(400):
        c = QMPClient("snap-test")
        try:
            await c.connect(path)
            return c
        except ConnectError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no QMP at {path}")


def test_qmp_migrate_query_migrate_and_incoming_against_the_engine(tmp_path: Path) -> None:
    """The wire: migrate refuses a running VM and non-file URIs; query-migrate goes from none to
    completed in QEMU's shape; the engine restores from a plan's incoming, and refuses a
    corrupted snapshot with one clear line (exit 1, no traceback, no VM)."""
    import dataclasses

    qmp, folder, out1, out2 = (tmp_path / n for n in ("q.sock", "snap", "s1", "s2"))
    plan = make_plan(write_guest(tmp_path, BUTTON), serial_file=out1, memory=128 << 20)
    plan = dataclasses.replace(plan, qmp=(str(qmp),), seccomp=True)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.dumps())
    proc = engine_proc(plan_path)

    async def take() -> None:
        c = await _qmp(str(qmp))
        assert await c.execute("query-migrate") == {"status": "none"}
        with pytest.raises(ExecuteError, match="running; pause it first"):
            await c.execute("migrate", {"uri": f"file:{folder}"})
        for uri in ("tcp:127.0.0.1:4444", "unix:/tmp/x.sock", "exec:cat"):
            with pytest.raises(ExecuteError, match="snapshots to a folder only"):
                await c.execute("migrate", {"uri": uri})
        await c.execute("stop")
        await c.execute("migrate", {"uri": f"file:{folder}"})
        st = await c.execute("query-migrate")
        while st["status"] == "active":
            await asyncio.sleep(0.02)
            st = await c.execute("query-migrate")
        assert st["status"] == "completed", st
        assert st["ram"]["total"] == 128 << 20 and st["ram"]["remaining"] == 0
        assert st["total-time"] >= st["setup-time"] >= 0
        with pytest.raises(ExecuteError, match="already holds a snapshot"):
            await c.execute("migrate", {"uri": f"file:{folder}"})
        await c.execute("quit")
        with contextlib.suppress(EOFError):  # the engine may close first: it is quitting
            await c.disconnect()

    wait_for(lambda: read(out1) == b"a")
    asyncio.run(asyncio.wait_for(take(), 60))
    assert proc.wait(20) == 0

    plan2 = dataclasses.replace(plan, incoming=f"file:{folder}", name="back")
    plan2 = dataclasses.replace(
        plan2, serial=dataclasses.replace(plan.serial, chardev=dataclasses.replace(
            plan.serial.chardev, path=str(out2)))
    )  # fmt: skip
    (tmp_path / "plan2.json").write_text(plan2.dumps())
    proc = engine_proc(tmp_path / "plan2.json")

    async def back() -> None:
        c = await _qmp(str(qmp))
        assert (await c.execute("query-status"))["status"] == "running"
        assert (await c.execute("query-name"))["name"] == "back"
        await c.execute("system_powerdown")
        with contextlib.suppress(EOFError):  # the guest powers off at once
            await c.disconnect()

    asyncio.run(asyncio.wait_for(back(), 30))
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    assert read(out2) == b"b"

    _flip(folder / STATE_FILE, 100)
    proc = engine_proc(tmp_path / "plan2.json")
    assert proc.wait(20) == 1
    err = proc.stderr.read() if proc.stderr else ""
    assert "is corrupted: its SHA-256 does not match the header" in err, err
    assert "Traceback" not in err and not qmp.exists()


def test_restore_through_the_engine_pool(tmp_path: Path) -> None:
    """A restore is a start request with the ``incoming`` option: the forked engine builds the
    VM from the snapshot; a request that contradicts its plan is refused by name."""
    from engine.pool import client

    env = pool_env(tmp_path)
    try:
        _tmpl, folder = template(tmp_path, env)
        start_pool(env)
        path, out = vm_manifest(tmp_path, "pooled")
        res = svl(env, "up", "-d", "--restore", str(folder), str(path))
        assert res.returncode == 0, res.stderr
        row = json.loads(svl(env, "ps", "--json").stdout)[0]
        comm = Path(f"/proc/{row['pid']}/comm").read_text().strip()
        assert comm == "sv-pooled", "forked by the pool, not exec'd"
        time.sleep(0.2)
        assert read(out) == b""
        assert svl(env, "qmp", "pooled", "system_powerdown").returncode == 0
        wait_for(lambda: read(out) == b"b")
        assert wait_gone(row["pid"])

        plan = make_plan(write_guest(tmp_path, BUTTON), serial_file=tmp_path / "x")
        other = tmp_path / "other.plan.json"
        import dataclasses

        other.write_text(dataclasses.replace(plan, incoming="file:/elsewhere").dumps())
        sock = str(tmp_path / "rt" / ".pool.sock")
        with pytest.raises(client.PoolRefused) as e:
            client.start(sock, str(other), {}, {"incoming": f"file:{folder}"})
        assert (
            e.value.code == "bad-option" and "the plan restores file:/elsewhere" in e.value.message
        )
        with pytest.raises(client.PoolRefused) as e:
            client.start(sock, str(other), {}, {"incoming": "tcp:1.2.3.4:5"})
        assert e.value.code == "bad-option"
    finally:
        stop_everything(env)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
