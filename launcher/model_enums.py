"""The manifest's value sets (arch, machine type, transport, NUMA policy, chardev backend, net
type, aio, discard, panic action), as ``StrEnum`` so a value prints as the manifest spells it.

A leaf module split from ``launcher.model``, which re-exports every name here.
"""

from __future__ import annotations

from enum import StrEnum


class Arch(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


class MachineType(StrEnum):
    MICROVM = "microvm"
    Q35 = "q35"
    VIRT = "virt"  # aarch64 standard VM
    NONE = "none"

    @property
    def is_standard(self) -> bool:
        return self in (MachineType.Q35, MachineType.VIRT)


class Transport(StrEnum):
    MMIO = "mmio"
    PCI = "pci"


class NumaPolicy(StrEnum):
    DEFAULT = "default"
    PREFERRED = "preferred"
    BIND = "bind"
    INTERLEAVE = "interleave"


class ChardevBackend(StrEnum):
    STDIO = "stdio"
    PTY = "pty"
    SOCKET = "socket"
    FILE = "file"


class NetType(StrEnum):
    TAP = "tap"
    VHOST_USER = "vhost-user"


class Aio(StrEnum):
    NATIVE = "native"
    IO_URING = "io_uring"
    OFF = "off"


class Discard(StrEnum):
    """What a drive does with the guest's discard (TRIM) requests; StratoVirt >= 2.3's words."""

    IGNORE = "ignore"  # not offered to the guest: the image keeps its blocks
    UNMAP = "unmap"  # offered: discarded ranges become holes in the image


class PanicAction(StrEnum):
    """What the builtin engine does when the guest reports a panic (pvpanic), named as QMP's
    ``GUEST_PANICKED`` event reports it (``engine.plan.PANIC_ACTIONS``)."""

    POWEROFF = "poweroff"  # the VM stops: SHUTDOWN reason guest-panic, exit code 7
    PAUSE = "pause"  # the vCPUs stop; state guest-panicked until quit or system_reset
    RUN = "run"  # only the event


class RestartPolicy(StrEnum):
    """What the GitOps agent does when a VM's engine ends (docs/gitops.md)."""

    ALWAYS = "always"  # start it again, however it ended
    ON_FAILURE = "on-failure"  # start it again after a crash, a signal or a guest panic
    NEVER = "never"  # leave it stopped (reported as drift)


class UpdateMode(StrEnum):
    """How ``svlaunch apply`` carries out a changed manifest on a running VM."""

    LIVE_OR_RESTART = "live-or-restart"  # QMP for live keys; a restart for anything else
    RESTART = "restart"  # every change restarts the VM
    MANUAL = "manual"  # report the change, touch nothing
