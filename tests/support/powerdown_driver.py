"""The user's stop path, scripted: ``svlaunch up -d``, console, ps/status/events, ``down``.

Not a test module of its own (it has no tests): tests/kvm/test_powerdown.py runs it on host KVM with
a tiny guest, and tests/rig/test_rig_powerdown.py runs it inside the rig's L1 (stdlib only, so it
runs on L1's bare Python) with the real Linux guest:

    python3 powerdown_driver.py --name VM --manifest M.toml --wait-text 'SVREPORT waiting'

It starts the VM detached, attaches ``svlaunch console`` (the detached serial socket) and
``svlaunch events --json``, waits for ``--wait-text`` on the console, records ``ps``/``status``,
runs ``svlaunch down``, and reaps the engine itself: it makes itself a child subreaper, so the
engine, orphaned when ``up -d`` returns, becomes its child and its real exit status is known.
Results go to stdout as ``RIGPD {json}`` lines, then the console bytes between ``RIGPD-CONSOLE``
markers (the rig puts this stdout on its own; SVREPORT lines in it parse as usual).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def say(**fields: object) -> None:
    print("RIGPD " + json.dumps(fields, sort_keys=True), flush=True)


def svlaunch(*args: str, timeout: float = 180) -> dict[str, object]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return {
        "rc": p.returncode,
        "stdout": p.stdout,
        "stderr": p.stderr,
        "s": round(time.monotonic() - t0, 3),
    }


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *args],
        stdin=subprocess.PIPE,  # kept open: the console relays until the VM hangs up
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


class Reader(threading.Thread):
    """Collects a child's stdout; ``found`` is set once ``text`` has appeared."""

    def __init__(self, proc: subprocess.Popen[bytes], text: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.proc, self.text = proc, text
        self.data = bytearray()
        self.found = threading.Event()

    def run(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.data += chunk
            if self.text and self.text in self.data:
                self.found.set()


def connected(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` holds a socket (the console's or the QMP client's) yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in fds):
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def reap(pid: int, timeout: float) -> int | None:
    """The exit code of our (adopted) child ``pid``; None if it is still running."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None  # not ours: the subreaper set-up failed
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--wait-text", required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--down-timeout", type=float, default=120)
    p.add_argument("--paused", action="store_true", help="start paused, 'cont' once attached")
    a = p.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    say(step="subreaper", ok=libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)

    up = svlaunch("up", "-d", *(["--paused"] if a.paused else []), a.manifest)
    say(step="up", **up)
    if up["rc"] != 0:
        return 1
    status = svlaunch("status", a.name, "--json")
    pid = json.loads(str(status["stdout"]))["pid"] if status["rc"] == 0 else None
    console = Reader(spawn("console", a.name), a.wait_text.encode())
    events = Reader(spawn("events", a.name, "--json"))
    console.start()
    events.start()
    if a.paused:  # the serial socket drops output while no console is attached: attach first
        attached = connected(console.proc.pid, 30) and connected(events.proc.pid, 30)
        say(step="cont", attached=attached, **svlaunch("qmp", a.name, "cont"))

    t0 = time.monotonic()
    seen = console.found.wait(a.timeout)
    say(step="wait", seen=seen, s=round(time.monotonic() - t0, 3))
    say(step="ps", **svlaunch("ps", "--json"))
    say(step="status", **svlaunch("status", a.name, "--json"))
    time.sleep(0.5)  # the events client has long connected; let it be served once more

    say(step="down", **svlaunch("down", a.name, "--timeout", str(a.down_timeout)))
    code = reap(pid, 30) if pid is not None else None
    say(step="engine", pid=pid, exit=code)
    for name, r in (("console", console), ("events", events)):
        try:
            rc = r.proc.wait(30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            rc = r.proc.wait()
        r.join(5)
        if name == "events":
            say(step="events", rc=rc, lines=bytes(r.data).decode(errors="replace").splitlines())
        else:
            say(step="console", rc=rc, bytes=len(r.data))
    say(step="ps-after", **svlaunch("ps", "--json"))
    sys.stdout.flush()
    out = sys.stdout.buffer
    out.write(b"RIGPD-CONSOLE-BEGIN\n" + bytes(console.data) + b"\nRIGPD-CONSOLE-END\n")
    out.flush()
    return 0


# -- for the tests that run this script --------------------------------------------------------


def parse(stdout: str) -> tuple[dict[str, dict], str]:
    """``RIGPD`` steps by name, and the console text, from this script's stdout."""
    steps: dict[str, dict] = {}
    for line in stdout.splitlines():
        at = line.find("RIGPD {")
        if at >= 0:
            fields = json.loads(line[at + 6 :])
            steps[fields["step"]] = fields
    console = ""
    if "RIGPD-CONSOLE-BEGIN\n" in stdout:
        console = stdout.split("RIGPD-CONSOLE-BEGIN\n", 1)[1].rsplit("\nRIGPD-CONSOLE-END", 1)[0]
    return steps, console


def check_clean_powerdown(steps: dict[str, dict], name: str, explain: str = "") -> None:
    """What a clean ``down`` looks like: the guest powered off, not a quit or a signal."""
    assert steps["subreaper"]["ok"], explain
    assert steps["up"]["rc"] == 0, explain
    assert steps["wait"]["seen"], explain
    ps = json.loads(steps["ps"]["stdout"])
    assert [(r["name"], r["state"]) for r in ps] == [(name, "running")], explain
    status = json.loads(steps["status"]["stdout"])
    assert status["state"] == "running" and status["pid"] == steps["engine"]["pid"], explain
    down = steps["down"]
    assert down["rc"] == 0 and down["stdout"].strip() == f"{name}: powered off", explain
    assert "quitting" not in down["stderr"] and "SIG" not in down["stderr"], explain
    assert steps["engine"]["exit"] == 0, explain
    events = [json.loads(x) for x in steps["events"]["lines"] if x.startswith("{")]
    got = [(e["event"], e.get("data") or {}) for e in events]
    assert got[-2:] == [
        ("POWERDOWN", {}),
        ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}),
    ], explain
    assert steps["events"]["rc"] == 0 and steps["console"]["rc"] == 0, explain
    assert json.loads(steps["ps-after"]["stdout"]) == [], explain


if __name__ == "__main__":
    sys.exit(main())
