"""virtio-blk's data path under the engine's seccomp filters, for each ``aio``.

A child process runs a Blk on a real event loop whose thread installed the role's filter (as
the engine's main loop and iothreads do), then reads and flushes through each back end for a
while. io_uring completes through task work that interrupts the thread's sleeps, which the
kernel resumes with ``restart_syscall``: a list without it killed the engine (SIGSYS) in the
rig's first fio job.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from directfs import direct_folder

REPO = Path(__file__).resolve().parents[2]
CHILD = r"""
import os, sys
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/tests/support", sys.argv[4] + "/tests/unit"]
from pathlib import Path
import engine.virtio.blk_spec as B
from engine import seccomp
from test_blk_aio import HDR, LoopRig
aio, role, path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
r = LoopRig(path, aio=aio, direct=aio != "off")
r.on_loop(lambda: seccomp.install(role))
for _ in range(40):
    for i in range(8):
        r.q.add([HDR.pack(B.VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1], in_align=4096)
    r.q.add([HDR.pack(B.VIRTIO_BLK_T_FLUSH, 0, 0)], [1])
    r.kick()
    assert all(c.data[-1] == 0 for c in r.wait_used(9))
print("served", flush=True)
os._exit(0)
"""


@pytest.mark.parametrize("role", ["main", "io"])
@pytest.mark.parametrize("aio", ["off", "native", "io_uring"])
def test_each_aio_serves_requests_under_the_loop_threads_filter(tmp_path, aio, role) -> None:
    with direct_folder(tmp_path) as folder:
        disk = folder / "disk.img"
        disk.write_bytes(b"\x5a" * (1 << 20))
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, aio, role, str(disk), str(REPO)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "SVLAUNCH_SECCOMP": "kill"},
        )
    assert proc.returncode == 0 and "served" in proc.stdout, (
        f"exit {proc.returncode} (-31/159: SIGSYS, a syscall the list lacks)\n{proc.stderr[-2000:]}"
    )


STOPPED = r"""
import sys, threading
sys.path.insert(0, sys.argv[2])
from engine import seccomp
held, ready = threading.Lock(), threading.Event()
held.acquire()
def waiter():
    seccomp.install(sys.argv[1])
    ready.set()
    held.acquire(timeout=1.5)  # a futex wait with a timeout: resumed by restart_syscall
    print("resumed", flush=True)
t = threading.Thread(target=waiter)
t.start()
ready.wait()
print("waiting", flush=True)
t.join()
"""


@pytest.mark.parametrize("role", ["main", "vcpu", "io"])
def test_a_timed_wait_interrupted_by_stop_and_continue_is_resumed(role) -> None:
    """What io_uring's task work does to the loop thread's GIL wait, made certain: SIGSTOP and
    SIGCONT (an operator, a debugger, py-spy attaching) interrupt a futex wait with a timeout,
    and the kernel resumes it with restart_syscall, which every role must allow."""
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED, role, str(REPO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SVLAUNCH_SECCOMP": "kill"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "resumed" in out, f"exit {proc.returncode}\n{err[-2000:]}"
