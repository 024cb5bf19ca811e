"""Runs inside the rig's L1 guest: set-up hook, the timed inner VMM command, then write-back.

Why in Python: L1 has Python anyway (the builtin engine needs it), and it gives a precise clock
around the VMM and a tar writer for the files the L2 guest changed. Markers for the host rig
are lines starting with "RIG " on the console (stdout); the VMM's own stdout goes to ttyS1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import termios
import time


def raw_tty(path: str) -> int:
    """Open the output serial port without newline translation (bytes pass through as-is)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


def marker(text: str) -> None:
    print(f"RIG {text}", flush=True)


def writeback(paths: list[str], dev: str) -> None:
    """Tar the files to the raw write-back disk; the host extracts them after QEMU exits."""
    n = size = 0
    with open(dev, "r+b") as disk:
        with tarfile.open(fileobj=disk, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for p in paths:
                if os.path.isfile(p):
                    tar.add(p, arcname=p.lstrip("/"), recursive=False)
                    n += 1
                    size += os.path.getsize(p)
        disk.flush()
        os.fsync(disk.fileno())
    marker(f"writeback ok files={n} bytes={size}")


def main() -> int:
    with open(sys.argv[1]) as f:
        run = json.load(f)
    env = dict(os.environ, **run.get("env", {}))
    if run.get("setup"):
        res = subprocess.run(["sh", "-c", run["setup"]], env=env, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            marker(f"setup failed rc={res.returncode}")
            marker(f"inner rc={125} s=0")
            return 0
    out = raw_tty(run.get("output", "/dev/ttyS1"))
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            run["argv"], cwd=run.get("cwd") or "/", env=env, stdin=subprocess.DEVNULL, stdout=out
        )
        rc = proc.returncode
    except OSError as e:
        marker(f"exec failed {e}")
        rc = 127
    elapsed = time.monotonic() - t0
    os.close(out)
    marker(f"inner rc={rc if rc >= 0 else 128 - rc} s={elapsed:.3f}")
    if run.get("wbdev"):
        try:
            writeback(run.get("writeback", []), run["wbdev"])
        except (OSError, tarfile.TarError) as e:
            marker(f"writeback error {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
