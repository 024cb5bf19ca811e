"""The sandbox's rules, in one place: used by the sandbox itself (``spec.py``, ``cgroup.py``,
``caps.py``), by ``svlaunch validate`` for the pure ones (``launcher/validate/ozone.py``) and by
``svlaunch check``/``up`` for those that read the host (``launcher/validate/host.py``, which
runs ``spec.build_spec`` with manifest keys). Nothing here does I/O except ``os.stat`` where a
function says so; importing it loads no cffi (``engine.CONTRACT_MODULES``).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

MAX_ID = 65535  # ozone: uid/gid are u32 but at most 65535
MAX_NAME = 255
NAME_HINT = "set ozone.name to a name without '/' of at most 255 bytes"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a jail folder ``<root>/<exec>/<name>``, or None."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return f"sandbox name {name!r} becomes a folder name: it cannot be empty, '.', '..' or contain '/'"
    if len(name.encode()) > MAX_NAME:
        return f"sandbox name is {len(name.encode())} bytes, over the limit of {MAX_NAME}"
    return None


def id_problem(key: str, value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        return f"{key} {value!r} is not a number in 0..{MAX_ID}"
    return None


def exec_name(exec_file: str) -> str:
    """The jail's middle component: the exec file's name, as ozone does."""
    return os.path.basename(exec_file.rstrip("/")) or "engine"


def jail_of(root: str, exec_file: str, name: str) -> str:
    """``<root>/<exec name>/<name>``: the folder the sandbox creates (it must not exist)."""
    return os.path.join(root, exec_name(exec_file), name)


def in_jail(path: str, jail: str) -> bool:
    """``path`` lies in the jail folder, which the sandbox creates when the VM starts."""
    return os.path.abspath(path).startswith(jail.rstrip("/") + "/")


PTY_PROBLEM = "a pty cannot be reached from outside the jail"
PTY_HINT = "use a socket chardev (svlaunch console connects to it)"
SHARED_HINT = "put VM sockets in a directory of their own, e.g. /run/svlaunch/<vm>/"


def shared_dir_problem(path: str, role: str) -> str | None:
    """A socket the engine makes in a directory everyone can write (``/tmp``) would expose the
    directory to the jailed engine: refused. Stats the directory."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(d)
    except OSError:
        return None  # missing: the sandbox creates it for the VM
    if d == "/" or st.st_mode & stat.S_IWOTH:
        return f"{role} socket {path!r} sits in a shared directory {d!r}"
    return None


#: capability(7) numbers, Linux 6.x (0..40)
CAPS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
NAMES = {v: k for k, v in CAPS.items()}

#: Capabilities that give the engine a way out of the jail; kept only with a warning.
DANGEROUS = frozenset(
    {"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_DAC_OVERRIDE",
     "CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_MKNOD",
     "CAP_SYS_CHROOT", "CAP_FOWNER", "CAP_CHOWN", "CAP_BPF", "CAP_SYS_BOOT"}
)  # fmt: skip


def parse_caps(names: tuple[str, ...] | None) -> tuple[int, list[str]]:
    """Capability names → (mask, errors). ``None`` (or empty) keeps nothing, like ozone.

    Names are case-insensitive and need the ``CAP_`` prefix (as ozone): ``net_admin`` alone is
    refused with a hint, because ``-capability`` must mean the same thing for both backends.
    """
    mask = 0
    errors: list[str] = []
    for raw in names or ():
        name = raw.strip().upper()
        if name in CAPS:
            mask |= 1 << CAPS[name]
        elif f"CAP_{name}" in CAPS:
            errors.append(f"capability {raw!r} needs the CAP_ prefix: write 'CAP_{name}'")
        else:
            errors.append(f"unknown capability {raw!r} (known: CAP_CHOWN … CAP_CHECKPOINT_RESTORE)")
    return mask, errors


def names_of(mask: int) -> list[str]:
    return [NAMES.get(i, str(i)) for i in range(64) if mask >> i & 1]


OZONE_KEYS = ("cpuset.cpus", "memory.limit_in_bytes")
_CPULIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_SIZE = re.compile(r"^(\d+)([kKmMgGtT]?)$")


@dataclass(frozen=True)
class Limits:
    """What the VM's cgroups must hold. ``memory`` is bytes, or -1 for "no limit"."""

    cpus: str | None = None
    mems: str | None = None
    memory: int | None = None

    @property
    def controllers(self) -> tuple[str, ...]:
        out = []
        if self.cpus is not None or self.mems is not None:
            out.append("cpuset")
        if self.memory is not None:
            out.append("memory")
        return tuple(out)


def parse_cpulist(text: str) -> set[int]:
    """``"0-2,5"`` → {0, 1, 2, 5}; raises ValueError on bad syntax or a reversed range."""
    text = text.strip()
    if not text:
        return set()
    if not _CPULIST.match(text):
        raise ValueError(f"{text!r} is not a cpu list like '0-3,5'")
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise ValueError(f"range {part!r} is reversed")
        out.update(range(a, b + 1))
    return out


def parse_size(text: str) -> int:
    """``memory.limit_in_bytes`` values: bytes with an optional K/M/G/T suffix, or -1/max."""
    text = text.strip()
    if text in ("-1", "max"):
        return -1
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size like 1073741824, 512M or 2G")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(m.group(1)) * mult


def parse_limits(
    entries: tuple[tuple[str, str], ...], numa: str | None, bound_nodes: tuple[int, ...] = ()
) -> tuple[Limits, list[str]]:
    """Manifest cgroup entries + numa → (Limits, errors). Pure."""
    errors: list[str] = []
    cpus: str | None = None
    memory: int | None = None
    seen: set[str] = set()
    for key, value in entries:
        if key in seen:
            errors.append(f"cgroup key {key!r} is given twice")
        seen.add(key)
        if key == "cpuset.cpus":
            try:
                parse_cpulist(value)
                cpus = value.strip()
            except ValueError as e:
                errors.append(f"cgroup cpuset.cpus: {e}")
        elif key == "memory.limit_in_bytes":
            try:
                memory = parse_size(value)
            except ValueError as e:
                errors.append(f"cgroup memory.limit_in_bytes: {e}")
        else:
            errors.append(f"unsupported cgroup key {key!r} (supported: {', '.join(OZONE_KEYS)})")
    mems: str | None = None
    if numa is not None:
        try:
            parse_cpulist(numa)
            mems = numa.strip()
        except ValueError as e:
            errors.append(f"numa (cpuset.mems): {e}")
    elif bound_nodes:
        mems = ",".join(str(n) for n in sorted(set(bound_nodes)))
    return Limits(cpus, mems, memory), errors
