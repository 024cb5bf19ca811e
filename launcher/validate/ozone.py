"""ozone sandbox rules (stratovirt-spec §8): ids, capability names, cgroup keys."""

from __future__ import annotations

from launcher.validate.base import Context

MAX_ID = 65535
CGROUP_KEYS = ("cpuset.cpus", "memory.limit_in_bytes")
# Linux capabilities 0-40, the set ozone knows.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]


def _close(word: str, options: list[str] | tuple[str, ...]) -> list[str]:
    import difflib  # only when a name is wrong

    return difflib.get_close_matches(word, list(options), n=1)


def check(ctx: Context) -> None:
    oz = ctx.manifest.ozone
    if oz is None:
        return
    for key, val in (("uid", oz.uid), ("gid", oz.gid)):
        if val > MAX_ID:
            ctx.add(
                "ozone-id-range",
                ("ozone", key),
                f"{key} {val} is above {MAX_ID}",
                f"use a {key} of at most {MAX_ID}",
            )
    name = oz.name or ctx.manifest.name
    npath = ("ozone", "name") if oz.name else ("name",)
    if "/" in name or name in (".", ".."):
        ctx.add(
            "ozone-name",
            npath,
            f"sandbox name {name!r} becomes a folder name under"
            f" {oz.root}; it cannot contain '/' or be '.'/'..'",
            "set ozone.name",
        )
    if len(name.encode()) > 255:
        ctx.add("ozone-name", npath, "sandbox name is longer than 255 bytes", "set ozone.name")
    for i, cap in enumerate(oz.capabilities or ()):
        if cap.upper() not in CAPABILITIES:
            close = _close(cap.upper(), CAPABILITIES)
            ctx.add(
                "ozone-capability",
                ("ozone", "capabilities", i),
                f"unknown capability {cap!r}",
                f"did you mean {close[0]!r}?"
                if close
                else "use a full name with the CAP_ prefix, e.g. CAP_NET_ADMIN",
            )
    keys = dict(oz.cgroup)
    for key, value in oz.cgroup:
        p = ("ozone", "cgroup", key)
        if key not in CGROUP_KEYS:
            close = _close(key, CGROUP_KEYS)
            ctx.add(
                "ozone-cgroup-key",
                p,
                f"ozone does not support cgroup key {key!r}",
                f"did you mean {close[0]!r}?" if close else "supported: " + ", ".join(CGROUP_KEYS),
            )
        if "=" in value or " " in value or not value:
            ctx.add(
                "ozone-cgroup",
                p,
                f"cgroup value {value!r} must be non-empty, without '=' or spaces",
                'e.g. "0-3" or "1073741824"',
            )
    if "cpuset.cpus" in keys and not oz.numa:
        ctx.warn(
            "ozone-numa",
            ("ozone", "cgroup", "cpuset.cpus"),
            "cpuset.cpus without ozone.numa leaves cpuset.mems empty",
            'add ozone.numa = "0"',
        )
