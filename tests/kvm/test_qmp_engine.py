"""The QMP server in the real engine process (host KVM), driven by qemu.qmp.

The guest is one of the tests' tiny guests: it prints a line on COM1 and halts, so the VM stays
up until QMP says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "support"
sys.path.insert(0, str(TESTS))

from tiny_guest import HANG, make_plan, say, write_guest  # noqa: E402

pytestmark = pytest.mark.kvm


def start_engine(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    import dataclasses

    kernel = write_guest(tmp_path, say(b"hello qmp\n") + HANG)
    serial = tmp_path / "serial.txt"
    qmp = tmp_path / "qmp.sock"
    plan = make_plan(kernel, cpus=2, serial_file=serial)
    plan = dataclasses.replace(plan, name="qmp-engine", qmp=(str(qmp),), paused=True)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.dumps())
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "--plan", str(plan_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not qmp.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"engine did not serve QMP: {err.decode()[-2000:]}")
        time.sleep(0.05)
    return proc, qmp, serial


def test_engine_lifecycle_over_qmp(tmp_path: Path) -> None:
    proc, qmp, serial = start_engine(tmp_path)

    async def go() -> None:
        q = QMPClient("engine-test")
        await q.connect(str(qmp))
        assert (await q.execute("query-status"))["status"] in ("prelaunch", "paused")
        assert (await q.execute("query-name")) == {"name": "qmp-engine"}
        with q.listener(("RESUME", "STOP")) as listener:
            await q.execute("cont")
            assert (await asyncio.wait_for(listener.get(), 10))["event"] == "RESUME"
            deadline = time.monotonic() + 20
            while b"hello qmp" not in (serial.read_bytes() if serial.exists() else b""):
                assert time.monotonic() < deadline, "guest output never arrived"
                await asyncio.sleep(0.05)
            await q.execute("stop")
            assert (await asyncio.wait_for(listener.get(), 10))["event"] == "STOP"
        assert (await q.execute("query-status"))["status"] == "paused"
        cpus = await q.execute("query-cpus")
        assert [c["CPU"] for c in cpus] == [0, 1]
        assert all(c["thread_id"] > 0 for c in cpus)
        assert all(os.path.exists(f"/proc/{proc.pid}/task/{c['thread_id']}") for c in cpus)
        stats = await q.execute("x-svlaunch-query-stats")
        assert stats["uptime"] > 0 and len(stats["vcpu-exits"]) == 2
        with pytest.raises(ExecuteError) as err:
            await q.execute("query-balloon")
        assert err.value.error_class == "DeviceNotActive"
        with q.listener("SHUTDOWN") as listener:
            await q.execute("quit")
            ev = await asyncio.wait_for(listener.get(), 10)
        assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
        with contextlib.suppress(EOFError):  # the engine hangs up as it exits, as QEMU does
            await q.disconnect()

    try:
        try:
            asyncio.run(asyncio.wait_for(go(), 60))
        except Exception:
            proc.kill()
            _, err = proc.communicate()
            print(f"engine exit {proc.returncode}; stderr:\n{err.decode()[-3000:]}")
            raise
        assert proc.wait(15) == 0
        assert not qmp.exists(), "the engine must remove its QMP socket at exit"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
