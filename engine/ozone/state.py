"""What a realized sandbox left on the host, saved after every step so teardown works after a crash.

The record lives in the runtime dir (``/run/svlaunch/.ozone/<exec>-<name>.json``), outside the
jail, written atomically. ``teardown`` needs nothing else: not the plan, not the live process.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

DEFAULT_STATE_DIR = "/run/svlaunch/.ozone"  # a dot: never a VM name (engine.names)


@dataclass
class State:
    name: str
    exec_name: str
    jail: str
    jail_created: bool = False  # only a jail this sandbox made is ever removed
    cgroup_limits: dict[str, object] = field(default_factory=dict)
    cgroups: list[str] = field(default_factory=list)  # dirs created, in creation order
    made_dirs: list[str] = field(default_factory=list)  # host dirs created outside the jail
    sockets: list[str] = field(default_factory=list)  # the sockets the engine listens on
    links: list[list[str]] = field(default_factory=list)  # [host path, target] symlinks made
    pidfile: str | None = None
    pidfile_id: list[int] | None = None  # ownfiles.file_id of the pidfile the supervisor made
    supervisor_pid: int = 0
    supervisor_start: str = ""
    engine_pid: int = 0
    engine_start: str = ""  # /proc/<pid>/stat field 22, to tell a reused pid apart

    @staticmethod
    def path_for(state_dir: str, exec_name: str, name: str) -> str:
        return os.path.join(state_dir, f"{exec_name}-{name}.json")

    def save(self, path: str) -> None:
        private_dirs(os.path.dirname(path))
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> State:
        with open(path) as f:
            return cls(**json.load(f))


def private_dirs(path: str) -> None:
    """``mkdir -p`` where every folder made is 0700: the state dir sits in svlaunch's runtime
    root (``/run/svlaunch``), which svlaunch trusts only while no one else can enter it."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # exact, whatever the umask


def alive(pid: int, start: str, proc: str = "/proc") -> bool:
    """``pid`` is still the process that started at ``start`` (a zombie counts as gone)."""
    if not pid or not start:
        return False
    try:
        with open(f"{proc}/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return len(fields) > 19 and fields[19] == start and fields[0] not in ("Z", "X")


def proc_start_time(pid: int, proc: str = "/proc") -> str:
    """The process's start time in clock ticks ("" if it is gone): pid + this = one process."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
