"""vCPU kicks when the VM is built off the main thread (a harness, a worker, an embedding).

Python lets only the main thread install signal handlers, but a kick needs ``KICK_SIGNAL``
handled or it cannot interrupt ``KVM_RUN``. The engine installs a C-level handler from
whichever thread builds; here a fresh interpreter imports the engine and builds the VM on a
worker thread only, with a guest spinning in ``jmp $`` (never leaving KVM_RUN by itself): pause
and stop must still return promptly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "support"

SCRIPT = r"""
import json, sys, threading, time
from pathlib import Path
sys.path[:0] = [ROOT, TESTS]
out = {}

def worker():
    from tiny_guest import make_plan, write_guest
    from engine.vm import Vm  # the engine is first imported on this thread
    plan = make_plan(write_guest(Path(TMP), b"\xeb\xfe"))  # jmp $
    vm = Vm(plan)
    vm.start()
    time.sleep(0.3)
    v = vm.machine.vcpus[0]
    t = time.monotonic()
    out["paused"] = v.pause(timeout=3)
    out["pause_s"] = time.monotonic() - t
    v.resume()
    time.sleep(0.1)
    t = time.monotonic()
    vm.close()
    out["close_s"] = time.monotonic() - t
    out["alive"] = v.alive

th = threading.Thread(target=worker)
th.start()
th.join(30)
print(json.dumps(out))
"""


def test_pause_and_stop_kick_a_spinning_vcpu_built_off_the_main_thread(tmp_path) -> None:
    script = SCRIPT.replace("ROOT", repr(str(ROOT))).replace("TESTS", repr(str(TESTS)))
    script = script.replace("TMP", repr(str(tmp_path)))
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["paused"] is True, f"pause did not park the vCPU: {res.stderr[-1000:]}"
    assert out["pause_s"] < 1.0
    assert out["close_s"] < 2.0 and out["alive"] is False
    assert "kick signal not installed" not in res.stderr
