"""A stand-in payload for tests and the start-up benchmark: proves the runtime works in the jail.

Run as ``python -m engine.ozone.probe``: it imports the engine's packages, installs the "main"
seccomp filter (unless disabled), prints one JSON line of what it sees from inside, then waits
for stdin to close (so the host can inspect ``/proc/<pid>/`` meanwhile) and exits 0.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    import engine.errors
    import engine.ozone.layout  # noqa: F401  the project's code is importable in the jail
    from engine import seccomp

    facts = {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "hostname": os.uname().nodename,
        "root": sorted(os.listdir("/")),
        "dev": sorted(os.listdir("/dev")),
        "plan": os.path.exists("/plan.json"),
    }
    line = json.dumps(facts) + "\n"
    seccomp.install("main")  # after gathering: getuid/uname are set-up calls, not run-time ones
    sys.stdout.write(line)
    sys.stdout.flush()
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
