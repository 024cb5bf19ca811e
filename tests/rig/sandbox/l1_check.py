"""Runs in the rig's L1 (raw mode): boot the sandboxed manifest through ``svlaunch up``, look at
the running sandbox from outside, stop it every way a user can, and check what is left.

Phases (each announced by an ``SBXPHASE <name>`` line; results are ``SBXCHECK key=value...``):
  boot     ``svlaunch up MANIFEST`` in the foreground: the guest's console is our stdout (its
           SVREPORT lines), until the guest powers off; meanwhile a thread reads the engine's
           ``/proc/<pid>/`` (uid, capabilities, no_new_privs, seccomp on every thread, cgroup).
  down     ``svlaunch up -d`` then ``svlaunch down NAME`` while the guest runs.
  crash    ``svlaunch up -d``, SIGKILL to the supervisor (the engine dies with it), then
           ``svlaunch down NAME``: reports the VM gone and tears its jail down.
  again    ``svlaunch up MANIFEST`` in the foreground once more: boots to ``SVREPORT done``.
  startup  ``up -d --paused`` until QMP answers, with and without the sandbox (start-up cost).
After each phase: ``SBXCHECK left phase=... jail=... cgroup=... mounts=... state=... link=...``
(0 everywhere means nothing was left). Why one L1 run: an L1 boot costs ~5 s of TCG time, and
the phases must share one host (the crash leaves state the next ``up`` must find).

    python3 l1_check.py MANIFEST NAME
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

JAIL_BASE = "/srv/ozone/stratovirt"
CGROUP = "/sys/fs/cgroup/stratovirt"
STATE_DIR = "/run/svlaunch/.ozone"


def say(kind: str, **fields: object) -> None:
    line = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"SBX{kind} {line}".rstrip(), flush=True)


def svlaunch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(pid: int | str, task: str = "") -> dict[str, str]:
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def engine_pid(name: str, timeout: float = 60, stale: int = 0) -> int | None:
    """The engine's host pid from the sandbox's state file (not ``stale``: a crashed run's)."""
    deadline = time.monotonic() + timeout
    path = f"{STATE_DIR}/stratovirt-{name}.json"
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                pid = json.load(f).get("engine_pid", 0)
            if pid and pid != stale:
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def observe(name: str, stale: int = 0, min_threads: int = 2, timeout: float = 120) -> None:
    """Report the jailed engine as the host sees it, once every thread has its filter."""
    pid = engine_pid(name, stale=stale)
    if pid is None:
        say("CHECK", running="no-state-file")
        return
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            seen = {t: status(pid, t)["Seccomp"] for t in tasks}
            st = status(pid)
            with open(f"/proc/{pid}/cgroup") as f:
                cgroup = f.read().strip().replace(" ", "_")
            root = ",".join(sorted(os.listdir(f"/proc/{pid}/root")))
        except (OSError, KeyError):
            say("CHECK", running="gone", threads=len(seen))
            return
        if len(seen) >= min_threads and all(v == "2" for v in seen.values()):
            break
        time.sleep(0.2)
    filtered = sum(v == "2" for v in seen.values())
    say("CHECK", running="yes", uid=st["Uid"].split()[0], capeff=st["CapEff"], capbnd=st["CapBnd"],
        nnp=st["NoNewPrivs"], threads=len(seen), seccomp_threads=filtered, cgroup=cgroup, root=root,
        jail=int(os.path.isdir(f"{JAIL_BASE}/{name}")))  # fmt: skip


def mounts_under(path: str) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(line.split()[4].startswith(path) for line in f)


def left(phase: str, name: str) -> None:
    links = [p for p in glob.glob(f"/run/svlaunch/{name}/*") if os.path.islink(p)]
    say("CHECK", left="", phase=phase, jail=int(os.path.lexists(f"{JAIL_BASE}/{name}")),
        sockdir=int(os.path.lexists(f"{JAIL_BASE}/{name}.sock")),
        cgroup=int(os.path.lexists(f"{CGROUP}/{name}")), mounts=mounts_under("/srv/ozone"),
        state=int(os.path.exists(f"{STATE_DIR}/stratovirt-{name}.json")), link=len(links))  # fmt: skip


def foreground(manifest: str, name: str, phase: str) -> None:
    say("PHASE", name=phase)
    stale = engine_pid(name, timeout=0.1) or 0  # a crashed run's state, cleaned by this up
    watcher = threading.Thread(target=observe, args=(name, stale), daemon=True)
    watcher.start()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "up", manifest],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher.join(timeout=10)
    say("CHECK", up=phase, rc=proc.returncode, s=f"{time.monotonic() - t0:.1f}")
    if proc.returncode:
        print(proc.stderr, flush=True)
    log = f"/run/svlaunch/{name}.last.log"
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = f.read()[-3000:]
        print(f"--- engine log ({phase}) ---\n{tail}", flush=True)
    left(phase, name)


def detached(manifest: str, name: str) -> tuple[int, int]:
    """``up -d``; (rc, supervisor pid)."""
    res = svlaunch("up", "-d", "--timeout", "120", manifest)
    if res.returncode:
        print(res.stdout + res.stderr, flush=True)
    try:
        with open(f"/run/svlaunch/{name}/pid") as f:
            return res.returncode, int(f.read())
    except (OSError, ValueError):
        return res.returncode, 0


def main() -> int:
    manifest, name = sys.argv[1], sys.argv[2]
    foreground(manifest, name, "boot")

    say("PHASE", name="down")
    rc, _ = detached(manifest, name)
    time.sleep(2)  # the guest is booting: vCPU threads in KVM_RUN under their filters
    observe(name)
    link = f"/run/svlaunch/{name}/qmp.sock"
    say("CHECK", detached=rc, qmp_link=int(os.path.islink(link)))
    res = svlaunch("down", name, "--timeout", "2")
    print((res.stdout + res.stderr).strip(), flush=True)
    say("CHECK", down=res.returncode)
    left("down", name)

    say("PHASE", name="crash")
    rc, sup = detached(manifest, name)
    time.sleep(1)
    epid = engine_pid(name, 5)
    if sup:
        os.kill(sup, signal.SIGKILL)
    time.sleep(1)
    say("CHECK", detached=rc, killed_supervisor=sup,
        engine_gone=int(not epid or not os.path.exists(f"/proc/{epid}/status")))  # fmt: skip
    res = svlaunch("down", name)
    say("CHECK", down_after_crash=res.returncode)
    left("crash", name)

    foreground(manifest, name, "again")
    startup(manifest, name)
    return 0


def startup(manifest: str, name: str, runs: int = 3) -> None:
    """``svlaunch up -d --paused`` until QMP answers, sandboxed and not (the same manifest
    without its ozone section), interleaved; then ``down --force``. Prints the medians."""
    say("PHASE", name="startup")
    with open(manifest) as f:
        text = f.read()
    plain = os.path.join(os.path.dirname(manifest), "plain.toml")  # same dir: same relative paths
    with open(plain, "w") as f:
        f.write(text[: text.index("[ozone]")])
    times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
    for _ in range(runs):
        for kind, path in (("plain", plain), ("sandboxed", manifest)):
            t0 = time.monotonic()
            res = svlaunch("up", "-d", "--paused", "--timeout", "120", path)
            times[kind].append(time.monotonic() - t0)
            if res.returncode:
                print(res.stdout + res.stderr, flush=True)
            svlaunch("down", "--force", name)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    say("CHECK", startup_plain_s=f"{med['plain']:.2f}", startup_sandboxed_s=f"{med['sandboxed']:.2f}",
        added_s=f"{med['sandboxed'] - med['plain']:.2f}", runs=runs)  # fmt: skip
    left("startup", name)


if __name__ == "__main__":
    sys.exit(main())
