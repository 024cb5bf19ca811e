"""Capability names and the drop sequence.

Parsing is pure (names → a bit mask). ``drop_to`` applies a mask to all five sets in the one
order the kernel allows: the bounding set first (dropping needs CAP_SETPCAP, which we are about to
lose), then KEEPCAPS so a root→uid switch keeps the permitted set, then the uid switch, then
effective/permitted/inheritable, then ambient (so the non-root engine keeps the kept capabilities
across execve of an interpreter that has no file capabilities).
"""

from __future__ import annotations

from engine.ozone import sys as osys

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


def parse(names: tuple[str, ...] | None) -> tuple[int, list[str]]:
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


def drop_to(mask: int, uid: int, gid: int, last_cap: int) -> None:
    """Keep exactly ``mask`` in all five sets and become ``uid``/``gid`` (see module doc for order)."""
    for cap in range(last_cap + 1):
        if not mask >> cap & 1:
            osys.prctl(osys.PR_CAPBSET_DROP, cap)
    osys.prctl(osys.PR_SET_KEEPCAPS, 1)
    osys.set_ids(uid, gid)
    osys.prctl(osys.PR_SET_KEEPCAPS, 0)
    # setresuid from 0 clears the effective set; permitted survives thanks to KEEPCAPS
    osys.capset(mask, mask, mask)
    osys.prctl(osys.PR_CAP_AMBIENT, osys.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(last_cap + 1):
        if mask >> cap & 1:
            osys.prctl(osys.PR_CAP_AMBIENT, osys.PR_CAP_AMBIENT_RAISE, cap)
