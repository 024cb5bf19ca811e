"""Control and sandbox: extra QMP monitors, the pvpanic device and the ozone sandbox.

Part of ``launcher.model`` (which re-exports every name and loads this module on first use).
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.keys import PATH, PATHS, REQUIRED, STRMAP, key
from launcher.model_enums import PanicAction


@dataclass(frozen=True, slots=True)
class Monitor:
    """``-mon chardev=<id>,id=<id>,mode=control``: QMP on a declared socket chardev."""

    chardev: str = key(REQUIRED, "Socket chardev (consumed).", sv=("-mon", "chardev"))
    id: str | None = key(None, "Monitor id.", nonempty=True, sv=("-mon", "id"))


@dataclass(frozen=True, slots=True)
class Pvpanic:
    """The pvpanic device (builtin engine only): how a supervisor tells a panic from a reboot."""

    on_panic: PanicAction = key(
        PanicAction.POWEROFF,
        "What the engine does when the guest panics: poweroff (the VM stops with SHUTDOWN reason"
        " guest-panic and exit code 7), pause (its vCPUs stop; state guest-panicked until quit"
        " or system_reset) or run (only the GUEST_PANICKED event); QEMU's -action panic=.",
        plan="PvpanicPlan.on_panic",
    )


@dataclass(frozen=True, slots=True)
class Ozone:
    """The ozone sandbox the VM runs in."""

    exec_file: str = key(
        REQUIRED,
        "The StratoVirt binary (statically linked).",
        kind=PATH,
        io="input",
        sv="ozone -exec-file",
        plan="SandboxPlan.exec_file",
    )
    uid: int = key(REQUIRED, "User id (at most 65535).", sv="-uid", plan="SandboxPlan.uid")
    gid: int = key(REQUIRED, "Group id (at most 65535).", sv="-gid", plan="SandboxPlan.gid")
    name: str | None = key(
        None,
        "Sandbox name (at most 255 bytes); default: the VM name.",
        nonempty=True,
        sv="-name",
        plan="SandboxPlan.name",
    )
    capabilities: tuple[str, ...] | None = key(
        None,
        "Capabilities kept (CAP_*); all others are dropped. Absent: drop all.",
        sv="-capability",
        plan="SandboxPlan.capabilities",
    )
    netns: str | None = key(
        None,
        "Network namespace file, e.g. /var/run/netns/web.",
        kind=PATH,
        io="keep",
        sv="-netns",
        plan="SandboxPlan.netns",
    )
    sources: tuple[str, ...] = key(
        (),
        "Extra files bind-mounted into the jail.",
        kind=PATHS,
        sv="-source",
        plan="SandboxPlan.sources",
    )
    numa: str | None = key(
        None,
        "Host NUMA node(s) for cpuset.mems.",
        nonempty=True,
        sv="-numa",
        plan="SandboxPlan.numa",
    )
    cgroup: tuple[tuple[str, str], ...] = key(
        (),
        "cgroup v1 values: cpuset.cpus and memory.limit_in_bytes.",
        kind=STRMAP,
        sv="-cgroup key=value ...",
        plan="SandboxPlan.cgroup",
    )
    clean_resource: bool = key(
        False,
        "Tear down a previous sandbox instead of launching.",
        sv="-clean-resource",
        plan="SandboxPlan.clean_resource",
    )
    root: str = key(
        "/srv/ozone",
        "Jail base folder (svlaunch extension).",
        kind=PATH,
        io="keep",
        plan="SandboxPlan.root",
    )
