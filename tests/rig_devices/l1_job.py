"""A background job for the rig's L1 (started from --l1-setup): act on a running guest.

Why a job: balloon inflation and a vsock round trip need the host side (L1) to act while the
guest runs, at a moment the guest chooses. The guest signals by writing text to its virtio
console (``svreport.hvc=TEXT``); the console's file chardev is an L1 file, so the job polls it,
then sends QMP ``balloon`` through ``svlaunch qmp NAME balloon value=BYTES`` (the user's way),
connects to the guest's vsock CID, and reads ``query-balloon`` back. Results go to L1's console
as ``RIGJOB key=value...`` lines, which reach the rig's stderr (prefixed ``L1| ``).

    python3 l1_job.py [--vhost-thread] [--wait-file F --wait-text T --vm NAME
                      [--balloon BYTES] [--vsock-cid CID]]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import subprocess
import sys
import time


def say(**fields: object) -> None:
    print("RIGJOB " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def svlaunch(*args: str) -> tuple[int, str]:
    res = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True
    )
    return res.returncode, (res.stdout + res.stderr).strip()


def wait_for(path: str, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if text.encode() in f.read():
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def query_balloon(vm: str, target: int, deadline: float) -> object:
    """``query-balloon``'s actual once it reaches ``target`` (or the last answer at ``deadline``).

    In process (launcher.qmpclient), not the CLI: each CLI start costs most of a second in L1.
    """
    from launcher.commands.qmp import address_of
    from launcher.qmpclient import QmpClient

    actual: object = None
    try:
        with QmpClient.connect(address_of(vm)) as c:
            while True:
                actual = c.execute("query-balloon", {}).get("actual")
                if (isinstance(actual, int) and actual <= target) or time.monotonic() > deadline:
                    return actual
                time.sleep(0.1)
    except Exception as e:  # reported, not raised: the guest goes on without us
        return f"error:{type(e).__name__}"


def vsock_probe(cid: int, port: int = 9) -> str:
    """Connect to ``cid:port``; the errno name (ECONNRESET: the guest's driver answered)."""
    if not os.path.exists("/dev/vhost-vsock"):
        return "no-vhost-vsock"
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((cid, port))
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno)) if e.errno else "timeout"
    finally:
        s.close()


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "-"


def vhost_thread(timeout: float) -> tuple[str, str]:
    """The first vhost worker (kernel thread ``vhost-<owner pid>``) and its owner's name.

    Why: a ping through a vhost NIC works just as well if the VMM quietly served the rings
    itself; the worker thread shows the kernel took them.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if pid.isdigit() and (name := _comm(pid)).startswith("vhost-"):
                return name, _comm(name.removeprefix("vhost-"))
        time.sleep(0.1)
    return "-", "-"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--wait-file")
    p.add_argument("--wait-text", default="")
    p.add_argument("--vm", default="")
    p.add_argument("--balloon", type=int)
    p.add_argument("--vsock-cid", type=int)
    p.add_argument("--vhost-thread", action="store_true")
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    if a.vhost_thread:
        thread, owner = vhost_thread(a.timeout)
        say(event="vhost", thread=thread, owner=owner)
    if a.wait_file is None:
        return 0
    if not wait_for(a.wait_file, a.wait_text, a.timeout):
        say(event="timeout", file=a.wait_file)
        return 1
    say(event="seen")
    if a.balloon is not None:
        t0 = time.monotonic()
        rc, out = svlaunch("qmp", a.vm, "balloon", f"value={a.balloon}")
        say(event="balloon", rc=rc, s=f"{time.monotonic() - t0:.2f}", out=json.dumps(out))
    if a.vsock_cid is not None:  # first: quick, and the guest must still be up
        say(event="vsock", cid=a.vsock_cid, result=vsock_probe(a.vsock_cid))
        say(event="vsock", cid=a.vsock_cid + 1, result=vsock_probe(a.vsock_cid + 1))
    if a.balloon is not None:
        actual = query_balloon(a.vm, a.balloon, deadline=time.monotonic() + 8)
        say(event="query-balloon", actual=actual)
    return 0


if __name__ == "__main__":
    sys.exit(main())
