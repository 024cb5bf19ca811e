"""GitOps in the rig's L1, with the real Linux guest (tests/rig/test_rig_gitops.py runs it).

A source folder in L1 (L1 has no git: the git mechanics are tested on the host, here the source
is the folder form) gets three revisions, each applied with ``svlaunch apply --yes`` as a user
or the agent would:

1. the VM: 256 MiB, a balloon without a target, a virtio console file the guest writes
   ``gitops-ready`` to before it measures MemAvailable for a while (``svreport.balloon=S``);
2. once the guest said ``gitops-ready``: ``balloon.target = 128M``, a live change (QMP balloon):
   the guest, still in the same boot, reports its MemAvailable dropping;
3. once it reported: ``memory.size = 384M``, a restart: the new guest reports its size.

Every step prints ``GITOPS {json}`` (the diff, the apply, the engine's pid); the guest's console
files come last between ``GITOPS-BOOT n`` markers so the test parses each boot's SVREPORTs.

    python3 l1_gitops.py --kernel K --initrd I [--wait S]

tests/rig/devices/l1_job.py travels with it (its ``wait_for`` watches the guest's files).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "devices"))
from l1_job import wait_for

SRC = "/tmp/gitops-src"
HVC = "/tmp/gitops-hvc.txt"
SERIAL = ("/tmp/gitops-serial1.log", "/tmp/gitops-serial2.log")
NAME = "rig-gitops"


def say(**fields: object) -> None:
    print("GITOPS " + json.dumps(fields, sort_keys=True), flush=True)


def svlaunch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def manifest(kernel: str, initrd: str, wait: int, memory: str, target: str, serial: str) -> str:
    cmdline = (
        f"console=ttyS0 quiet reboot=k panic=1 pci=off svreport.hvc=gitops-ready"
        f" svreport.balloon={wait} svreport.wait=kill"
    )
    return (
        f'name = "{NAME}"\n'
        f'[serial]\nbackend = "file"\npath = "{serial}"\n'
        f'[cpu]\ncpus = 1\n[memory]\nsize = "{memory}"\n'
        f'[boot]\nkernel = "{kernel}"\ninitrd = "{initrd}"\ncmdline = "{cmdline}"\n'
        f'[chardevs.hvc]\nbackend = "file"\npath = "{HVC}"\n'
        f'[consoles.con0]\nchardev = "hvc"\n'
        f"[balloon]\n{target}"
    )


def step(label: str) -> None:
    """Diff (JSON) and apply the source as it is now; report both and the engine's pid."""
    d = svlaunch("diff", SRC, "--host", "l1", "--format", "json")
    rows = json.loads(d.stdout)["rows"] if d.returncode == 0 else []
    a = svlaunch("apply", SRC, "--host", "l1", "--yes", "--stop-timeout", "5")
    ps = svlaunch("ps", "--json")
    pid = next((r["pid"] for r in json.loads(ps.stdout or "[]") if r["name"] == NAME), None)
    say(step=label, diff_rc=d.returncode, rows=rows, apply_rc=a.returncode,
        apply=a.stdout[-2000:], stderr=a.stderr[-2000:], pid=pid)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--wait", type=int, default=60)
    args = ap.parse_args()
    os.makedirs(SRC, exist_ok=True)
    path = os.path.join(SRC, "vm.toml")

    def write(memory: str, target: str, serial: str) -> None:
        with open(path, "w") as f:
            f.write(manifest(args.kernel, args.initrd, args.wait, memory, target, serial))

    try:
        write("256M", "", SERIAL[0])
        step("create")
        ready = wait_for(HVC, "gitops-ready", 400)
        say(step="guest-ready", ok=ready)
        write("256M", 'target = "128M"\n', SERIAL[0])
        step("balloon")
        reported = wait_for(SERIAL[0], "SVREPORT balloon", args.wait + 240)
        say(step="guest-balloon", ok=reported)
        write("384M", "", SERIAL[1])
        step("memory")
        booted = wait_for(SERIAL[1], "SVREPORT done", 400)
        say(step="guest-restarted", ok=booted)
        step("again")  # a second apply: no changes
    finally:
        svlaunch("down", NAME, "--force")
        for n, serial in enumerate(SERIAL, 1):
            print(f"GITOPS-BOOT {n}", flush=True)
            try:
                with open(serial, "rb") as f:
                    sys.stdout.write(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
            print(f"GITOPS-END {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
