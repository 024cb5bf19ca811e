"""A background job for the rig's L1 (started from --l1-setup): act on a running guest.

Why a job: balloon inflation and a vsock exchange need the host side (L1) to act while the
guest runs, at a moment the guest chooses. The guest signals by writing text to its virtio
console (``svreport.hvc=TEXT``); the console's file chardev is an L1 file, so the job polls it,
then sends QMP ``balloon`` through ``svlaunch qmp NAME balloon value=BYTES`` (the user's way),
talks to the guest's vsock echo (``svreport.vsock=PORT``, scripts/guest/svvsock.c) over
AF_VSOCK, and reads ``query-balloon`` back, or kills the engine with SIGKILL (``--kill-engine``:
the data-safety test, right after the guest's fsync). Results go to L1's console as
``RIGJOB key=value...`` lines, which reach the rig's stderr (prefixed ``L1| ``).

    python3 l1_job.py [--vhost-thread] [--wait-file F --wait-text T [--kill-engine] [--vm NAME
                      [--balloon BYTES] [--vsock-cid CID --vsock-port PORT]]]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
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
    from launcher.commands.qmp import session

    actual: object = None
    try:
        with session(vm) as c:
            while True:
                actual = c.execute("query-balloon", {}).get("actual")
                if (isinstance(actual, int) and actual <= target) or time.monotonic() > deadline:
                    return actual
                time.sleep(0.1)
    except Exception as e:  # reported, not raised: the guest goes on without us
        return f"error:{type(e).__name__}"


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "timeout"


def vsock_probe(cid: int, port: int) -> str:
    """Connect to ``cid:port`` where nobody listens; the errno name.

    ECONNRESET: the guest's driver answered the request with a reset (a lost request would
    time out); ENODEV: no VM holds the CID.
    """
    if not os.path.exists("/dev/vhost-vsock"):
        return "no-vhost-vsock"
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((cid, port))
        return "connected"
    except OSError as e:
        return _errname(e)
    finally:
        s.close()


def _read_line(s: socket.socket, limit: int = 4096) -> bytes:
    """Bytes up to and including the first newline (or what came before EOF)."""
    buf = b""
    while b"\n" not in buf and len(buf) < limit:
        chunk = s.recv(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def vsock_echo(cid: int, port: int, timeout: float) -> dict[str, object]:
    """Send a fresh line to the guest's echo on ``cid:port`` and read its answer.

    Connects until ``timeout`` (ECONNRESET means the echo does not listen yet). The line is
    random so that only this run's guest can answer it. ``result`` is ``echo`` when the reply
    is ``svlaunch-echo:<line>``, ``mismatch`` for any other reply, else the errno name.
    """
    if not os.path.exists("/dev/vhost-vsock"):
        return {"result": "no-vhost-vsock"}
    sent = f"rig-{os.urandom(6).hex()}"
    t0 = time.monotonic()
    deadline = t0 + timeout
    tries = 0
    while True:
        tries += 1
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(max(1.0, min(10.0, deadline - time.monotonic())))
        try:
            s.connect((cid, port))
            break
        except OSError as e:
            s.close()
            if e.errno != errno.ECONNRESET or time.monotonic() > deadline:
                return {"result": _errname(e), "tries": tries}
            time.sleep(0.2)
    connect_ms = (time.monotonic() - t0) * 1000
    try:
        with s:
            s.sendall(f"{sent}\n".encode())
            reply = _read_line(s).decode(errors="replace").rstrip("\n")
    except OSError as e:
        return {"result": _errname(e), "tries": tries, "sent": sent}
    return {
        "result": "echo" if reply == f"svlaunch-echo:{sent}" else "mismatch",
        "tries": tries,
        "connect_ms": f"{connect_ms:.0f}",
        "rtt_ms": f"{(time.monotonic() - t0) * 1000 - connect_ms:.1f}",
        "sent": sent,
        # one word on the RIGJOB line, whatever the guest sent
        "reply": reply.encode("unicode_escape").decode().replace(" ", "\\x20") or "-",
    }


def _is_engine(argv: list[bytes]) -> bool:
    """The engine's argv (engine.__main__.engine_argv): python -I -S -c CODE run --plan FILE."""
    return argv[1:4] == [b"-I", b"-S", b"-c"] and argv[5:7] == [b"run", b"--plan"]


def kill_engines() -> list[int]:
    """SIGKILL every engine process in L1 (the test runs one VM); their pids."""
    killed = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not _is_engine(f.read().split(b"\0")):
                    continue
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
        except OSError:
            pass
    return killed


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
    p.add_argument("--vsock-port", type=int, default=5000)
    p.add_argument("--vhost-thread", action="store_true")
    p.add_argument("--kill-engine", action="store_true")
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
    seen = time.monotonic()
    if a.kill_engine:
        pids = kill_engines()
        ms = f"{(time.monotonic() - seen) * 1000:.0f}"
        say(event="killed", pids=",".join(map(str, pids)) or "-", ms=ms)
        return 0
    say(event="seen")
    if a.balloon is not None:
        t0 = time.monotonic()
        rc, out = svlaunch("qmp", a.vm, "balloon", f"value={a.balloon}")
        say(event="balloon", rc=rc, s=f"{time.monotonic() - t0:.2f}", out=json.dumps(out))
    if a.vsock_cid is not None:
        # The refusals first: once the echo has answered, the guest goes on to power off.
        cid, port = a.vsock_cid, a.vsock_port
        say(event="vsock-refused", cid=cid, port=port + 1, result=vsock_probe(cid, port + 1))
        say(event="vsock-refused", cid=cid + 1, port=port, result=vsock_probe(cid + 1, port))
        say(event="vsock", cid=cid, port=port, **vsock_echo(cid, port, timeout=60))
    if a.balloon is not None:
        actual = query_balloon(a.vm, a.balloon, deadline=time.monotonic() + 8)
        say(event="query-balloon", actual=actual)
    return 0


if __name__ == "__main__":
    sys.exit(main())
