"""Runs inside the rig's L1 for bench/rig_snapshot.py (stdlib and the project only).

    python3 _rig_snapshot_l1.py --kernel K --initrd I --disk D --runs N --work DIR

The same VM (2 vCPUs, 256 MiB, one virtio-blk disk on virtio-mmio, COM1) boots once under
svlaunch's engine and once under QEMU microvm; each guest waits for its power button
(``svreport.wait=powerbutton``) and is saved: svlaunch with QMP ``stop`` + ``migrate
file:DIR``, QEMU with ``migrate exec:cat > FILE`` (Debian's QEMU 7.2 has no ``file:``
migration; QEMU stops the guest at the end of a live migration, as usual). Then, N times each,
interleaved: the restore request (the engine exec'd from a plan whose ``incoming`` is the
snapshot; the same through an engine pool; ``qemu ... -incoming "exec:cat FILE"``) until QMP
``query-status`` says running, polled every millisecond. The last restore of each is
powered off through its power button, to show the guest works. ``RIGBENCH {json}`` lines out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

CMDLINE = "console=ttyS0 quiet reboot=k panic=1 pci=off svreport.wait=powerbutton"


def say(**fields: object) -> None:
    print("RIGBENCH " + json.dumps(fields, sort_keys=True), flush=True)


def qmp(path: str, deadline: float):
    from launcher.qmpclient import QmpClient

    while True:
        try:
            return QmpClient.connect(path, timeout=30)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def until_running(path: str, t0: float, timeout: float = 120) -> float:
    """Seconds from ``t0`` until ``query-status`` says running (polled every ms)."""
    deadline = time.monotonic() + timeout
    c = qmp(path, deadline)
    try:
        while c.execute("query-status").get("status") != "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: not running after {timeout} s")
            time.sleep(0.001)
        return time.monotonic() - t0
    finally:
        c.close()


def wait_text(path: str, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                if text in f.read():
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def wait_migrated(path: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    c = qmp(path, deadline)
    try:
        while True:
            st = c.execute("query-migrate")
            if st.get("status") in ("completed", "failed", "cancelled"):
                return st
            if time.monotonic() > deadline:
                return st
            time.sleep(0.1)
    finally:
        c.close()


def powerdown(path: str, proc: subprocess.Popen[bytes], serial: str) -> bool:
    c = qmp(path, time.monotonic() + 30)
    try:
        c.execute("system_powerdown")
    finally:
        c.close()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        return False
    return wait_text(serial, "reboot: Power down", 5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def make_plan(a: argparse.Namespace, serial: str, sock: str, incoming: str | None = None):
    """The engine plan of the bench VM (from a manifest, as svlaunch compiles it)."""
    from launcher.compile.engine_plan import compile_plan
    from launcher.manifest import load_manifest

    path = os.path.join(a.work, "bench.toml")
    with open(path, "w") as f:
        f.write(
            f'name = "bench"\nqmp = "{sock}"\n[serial]\nbackend = "file"\npath = "{serial}"\n'
            '[machine]\ntype = "microvm"\n[cpu]\ncpus = 2\n[memory]\nsize = "256M"\n'
            f'[boot]\nkernel = "{a.kernel}"\ninitrd = "{a.initrd}"\ncmdline = "{CMDLINE}"\n'
            f'[drives.disk0]\nfile = "{a.disk}"\nreadonly = true\ndirect = false\n'
        )
    plan = compile_plan(load_manifest(path))
    return dataclasses.replace(plan, incoming=incoming, seccomp=True)


def qemu_argv(a: argparse.Namespace, serial: str, sock: str, *extra: str) -> list[str]:
    return [
        "qemu-system-x86_64", "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host",
        "-smp", "2", "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-serial", f"file:{serial}", "-qmp", f"unix:{sock},server=on,wait=off",
        "-kernel", a.kernel, "-initrd", a.initrd, "-append", CMDLINE,
        "-drive", f"id=blk0,file={a.disk},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=blk0", *extra,
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser()
    for opt in ("--kernel", "--initrd", "--disk", "--work"):
        p.add_argument(opt, required=True)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    from engine.__main__ import engine_argv

    devnull = subprocess.DEVNULL
    # -- the templates ------------------------------------------------------------------------
    snap, sock, serial = f"{a.work}/snap", f"{a.work}/sv.qmp", f"{a.work}/sv-boot.serial"
    plan_path = f"{a.work}/boot.json"
    with open(plan_path, "w") as f:
        f.write(make_plan(a, serial, sock).dumps())
    proc = subprocess.Popen(engine_argv(plan_path), stdout=devnull, stderr=devnull)
    booted = wait_text(serial, "SVREPORT waiting powerbutton", 600)
    c = qmp(sock, time.monotonic() + 30)
    c.execute("stop")
    t0 = time.monotonic()
    c.execute("migrate", {"uri": f"file:{snap}"})
    c.close()
    st = wait_migrated(sock)
    say(vmm="svlaunch", step="save", booted=booted, status=st.get("status"),
        s=round(time.monotonic() - t0, 3), disk_mib=os.stat(f"{snap}/memory").st_blocks * 512 >> 20)  # fmt: skip
    stop(proc)

    qsock, qserial, qfile = f"{a.work}/q.qmp", f"{a.work}/q-boot.serial", f"{a.work}/qemu.mig"
    proc = subprocess.Popen(qemu_argv(a, qserial, qsock), stdout=devnull, stderr=devnull)
    booted = wait_text(qserial, "SVREPORT waiting powerbutton", 600)
    c = qmp(qsock, time.monotonic() + 30)
    t0 = time.monotonic()
    c.execute("migrate", {"uri": f"exec:cat > {qfile}"})
    c.close()
    st = wait_migrated(qsock)
    say(vmm="qemu", step="save", booted=booted, status=st.get("status"),
        s=round(time.monotonic() - t0, 3), disk_mib=os.path.getsize(qfile) >> 20)  # fmt: skip
    stop(proc)

    # -- restores --------------------------------------------------------------------------------
    pool_sock = f"{a.work}/pool.sock"
    pool = subprocess.Popen([sys.executable, "-m", "engine.pool", "serve", "--socket", pool_sock,
                             "--lock", f"{a.work}/pool.lock"], stdout=devnull, stderr=devnull)  # fmt: skip
    while not os.path.exists(pool_sock) and pool.poll() is None:
        time.sleep(0.05)
    for i in range(a.runs):
        last = i == a.runs - 1
        # svlaunch, the engine exec'd (what `svlaunch up` does without a pool)
        serial = f"{a.work}/sv-{i}.serial"
        path = f"{a.work}/restore-{i}.json"
        with open(path, "w") as f:
            f.write(make_plan(a, serial, sock, f"file:{snap}").dumps())
        os.path.exists(sock) and os.unlink(sock)
        t0 = time.monotonic()
        proc = subprocess.Popen(engine_argv(path), stdout=devnull, stderr=devnull)
        s = until_running(sock, t0)
        ok = powerdown(sock, proc, serial) if last else None
        say(vmm="svlaunch-exec", step="restore", s=round(s, 4), run=i, powered_off=ok)
        stop(proc)
        # svlaunch through the engine pool (a restore request: the incoming option)
        time.sleep(0.5)  # the pool warms its next spare meanwhile, as between two `up`s
        os.path.exists(sock) and os.unlink(sock)
        from engine.pool import client

        log = os.open(f"{a.work}/pool-{i}.log", os.O_WRONLY | os.O_CREAT, 0o600)
        t0 = time.monotonic()
        started = client.start(pool_sock, path, {"log": log},
                               client.client_options(incoming=f"file:{snap}"))  # fmt: skip
        os.close(log)
        s = until_running(sock, t0)
        say(vmm="svlaunch-pool", step="restore", s=round(s, 4), run=i)
        os.kill(started.pid, signal.SIGKILL)
        os.close(started.pidfd)
        # QEMU -incoming from the file of the same guest
        qserial = f"{a.work}/q-{i}.serial"
        os.path.exists(qsock) and os.unlink(qsock)
        t0 = time.monotonic()
        proc = subprocess.Popen(qemu_argv(a, qserial, qsock, "-incoming", f"exec:cat {qfile}"),
                                stdout=devnull, stderr=devnull)  # fmt: skip
        s = until_running(qsock, t0)
        ok = powerdown(qsock, proc, qserial) if last else None
        say(vmm="qemu", step="restore", s=round(s, 4), run=i, powered_off=ok)
        stop(proc)
    pool.terminate()
    pool.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
