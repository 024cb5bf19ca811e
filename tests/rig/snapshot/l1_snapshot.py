"""In the rig's L1: issue 10's snapshot story with the real Linux guest, as a user runs it.

    python3 l1_snapshot.py --kernel K --initrd I --disk D --work DIR

1. ``svlaunch up -d`` the template (2 vCPUs, 256 MiB: a disk, a tap NIC, an rng, a virtio
   console on a socket, vhost-vsock); it boots, pings L1, starts its snapshot agent
   (``svreport.resume=hvc0``) and waits for the power button;
2. ``svlaunch snapshot --leave-paused``, then SIGKILL of its engine: the files are all that
   is left;
3. ``svlaunch up -d --restore`` on the same tap and MAC: the agent is told "resume" on its
   console and reports the clocks, re-probes its NIC, pings, reads the disk; then
   ``system_powerdown`` must power it off cleanly;
4. two clones of the same snapshot side by side, each with its own name, QMP socket, tap,
   MAC and vsock CID: both resume, re-read their MAC and answer pings; L1 connects to each
   clone's new CID (a reset from the guest shows it took the new CID); both are powered off.

Results are ``RIGSNAP {json}`` lines on stdout, then each VM's console between
``RIGSNAP-SERIAL <name>`` and ``RIGSNAP-SERIAL-END`` (SVREPORT lines in it parse as usual).
Stdlib and the project only (L1's Python).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

CMDLINE = [
    "console=ttyS0", "quiet", "reboot=k", "panic=1", "pci=off",
    "svreport.net=169.254.10.2/24,169.254.10.1", "svreport.resume=hvc0",
    "svreport.wait=powerbutton",
]  # fmt: skip
#: (name, tap, L1 address, guest address, MAC, vsock CID)
VMS = {
    "tmpl": ("tap0", "169.254.10.1", "169.254.10.2/24", "52:54:00:12:34:56", 10),
    "restored": ("tap0", "169.254.10.1", "169.254.10.2/24", "52:54:00:12:34:56", 10),
    "clone1": ("tap1", "169.254.11.1", "169.254.11.2/24", "52:54:00:00:00:01", 11),
    "clone2": ("tap2", "169.254.12.1", "169.254.12.2/24", "52:54:00:00:00:02", 12),
}


def say(step: str, **fields: object) -> None:
    print("RIGSNAP " + json.dumps({"step": step, **fields}, sort_keys=True), flush=True)


def svlaunch(*args: str, timeout: float = 300) -> dict[str, object]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return {
        "rc": p.returncode,
        "out": p.stdout,
        "err": p.stderr[-3000:],
        "s": round(time.monotonic() - t0, 3),
    }


def manifest(work: str, name: str, kernel: str, initrd: str, disk: str) -> str:
    tap, _, _, mac, cid = VMS[name]
    path = os.path.join(work, f"{name}.toml")
    cmdline = ", ".join(json.dumps(w) for w in CMDLINE)
    with open(path, "w") as f:
        f.write(
            f'name = "{name}"\n'
            f'[serial]\nbackend = "file"\npath = "{work}/{name}.serial"\n'
            '[machine]\ntype = "microvm"\n[cpu]\ncpus = 2\n[memory]\nsize = "256M"\n'
            f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = [{cmdline}]\n'
            f'[drives.disk0]\nfile = "{disk}"\ndirect = false\n'
            f'[nets.net0]\nifname = "{tap}"\nmac = "{mac}"\n'
            "[rngs.rng0]\n"
            f'[chardevs.agent]\nbackend = "socket"\npath = "{work}/{name}.agent"\n'
            "server = true\nnowait = true\n"
            '[virtio-serial]\nid = "vser0"\n[consoles.con0]\nchardev = "agent"\n'
            f'[vsock]\nid = "vsock0"\nguest-cid = {cid}\n'
        )
    return path


def serial(work: str, name: str) -> str:
    try:
        with open(os.path.join(work, f"{name}.serial"), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_text(work: str, name: str, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in serial(work, name):
            return True
        time.sleep(0.1)
    return False


def engine_pid(name: str) -> int:
    rows = json.loads(str(svlaunch("ps", "--json")["out"]) or "[]")
    return next(int(r["pid"]) for r in rows if r["name"] == name)


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def resume(work: str, name: str, timeout: float) -> dict[str, object]:
    """Tell the guest's agent it was restored (what an orchestrator does after a restore)."""
    _, _, addr, _, _ = VMS[name]
    peer = VMS[name][1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect(os.path.join(work, f"{name}.agent"))
        s.sendall(f"resume {addr} {peer}\n".encode())
        got = b""
        while b"\nresumed " not in b"\n" + got or not got.endswith(b"\n"):  # the tty echoes
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        lines = got.decode(errors="replace").splitlines()
        answer = next((x for x in lines if x.startswith("resumed ")), " | ".join(lines))
    except OSError as e:
        answer = f"error:{errno.errorcode.get(e.errno or 0, 'timeout')}"
    finally:
        s.close()
    done = wait_text(work, name, "SVREPORT resume done", timeout)
    return {"answer": answer, "done": done, "s": round(time.monotonic() - t0, 3)}


def vsock_probe(cid: int, port: int = 4321) -> str:
    """Connect to a port nobody listens on: ECONNRESET when the guest answers (as ``cid``)."""
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((cid, port))
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "timeout")
    finally:
        s.close()


def powerdown(work: str, name: str) -> dict[str, object]:
    pid = engine_pid(name)
    r = svlaunch("qmp", name, "system_powerdown")
    ended = gone(pid, 120)
    rows = json.loads(str(svlaunch("ps", "-a", "--json")["out"]) or "[]")
    record = next((row.get("ended") for row in rows if row["name"] == name), None)
    return {"rc": r["rc"], "gone": ended, "ended": record}


def main() -> int:
    p = argparse.ArgumentParser()
    for a in ("--kernel", "--initrd", "--disk", "--work"):
        p.add_argument(a, required=True)
    a = p.parse_args()
    work = a.work
    os.makedirs(work, exist_ok=True)
    folder = os.path.join(work, "snap")
    disks = {n: os.path.join(work, f"{n}.img") for n in VMS}
    for d in disks.values():  # each VM its own copy (a clone gets a copy of the template's)
        shutil.copyfile(a.disk, d)
    paths = {n: manifest(work, n, a.kernel, a.initrd, disks[n]) for n in VMS}
    try:
        say("up", **svlaunch("up", "-d", paths["tmpl"]))
        say("booted", seen=wait_text(work, "tmpl", "SVREPORT waiting powerbutton", 420))
        say("snapshot", **svlaunch("snapshot", "--leave-paused", "tmpl", folder))
        pid = engine_pid("tmpl")
        os.kill(pid, signal.SIGKILL)
        say("killed", pid=pid, gone=gone(pid, 30))
        say("down-tmpl", **svlaunch("down", "tmpl", "--force", "--timeout", "1"))
        say("files", names=sorted(os.listdir(folder)))

        say("restore", **svlaunch("up", "-d", "--restore", folder, paths["restored"]))
        say("resume-restored", **resume(work, "restored", 120))
        say("powerdown-restored", **powerdown(work, "restored"))

        for n in ("clone1", "clone2"):
            say(f"restore-{n}", **svlaunch("up", "-d", "--restore", folder, paths[n]))
        running = json.loads(str(svlaunch("ps", "--json")["out"]) or "[]")
        say("side-by-side", running=sorted(r["name"] for r in running))
        for n in ("clone1", "clone2"):
            say(f"resume-{n}", **resume(work, n, 120))
        for n in ("clone1", "clone2"):
            say(f"vsock-{n}", result=vsock_probe(VMS[n][4]))
        for n in ("clone1", "clone2"):
            say(f"powerdown-{n}", **powerdown(work, n))
    finally:
        for n in VMS:
            print(f"RIGSNAP-SERIAL {n}\n{serial(work, n)}\nRIGSNAP-SERIAL-END", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
