"""The contract between the QMP layer and a VM: what QMP may ask, and how the VM reports events.

The engine's VM object (``engine/machine``) implements ``VmControl``; the QMP command table
(``engine/qmp/commands.py``) is its only caller, so QMP never sees engine internals and the
engine never parses JSON. Values cross this line as small frozen dataclasses.

Threading: every ``VmControl`` method is called on the QMP server's thread, one call at a time
(the server serialises all clients). Methods may block briefly (``pause`` waits until the vCPUs
have stopped) but must not wait on the guest. Events go the other way through
``EventSink.emit``, callable from any thread (vCPU threads, device loops).

Errors: a method refuses with ``QmpError(error_class, desc)``; any other exception becomes a
``GenericError`` carrying its message (and is logged), never a dead server.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from engine.qmp.protocol import (
    DEVICE_NOT_ACTIVE,
    DEVICE_NOT_FOUND,
    GENERIC_ERROR,
)


class QmpError(Exception):
    """A command refused by the VM: becomes ``{"error": {"class", "desc"}}`` on the wire."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc

    @classmethod
    def not_active(cls, what: str) -> QmpError:
        return cls(f"No {what} device has been activated", DEVICE_NOT_ACTIVE)

    @classmethod
    def not_found(cls, what: str) -> QmpError:
        return cls(f"Device '{what}' not found", DEVICE_NOT_FOUND)

    @classmethod
    def wrong_state(cls) -> QmpError:
        """StratoVirt answers an invalid lifecycle transition with an empty GenericError."""
        return cls("", GENERIC_ERROR)


class RunState(enum.Enum):
    """QMP's ``query-status`` values that a microVM can be in."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # guest powered off, process about to exit
    PRELAUNCH = "prelaunch"  # built, never started (-S)
    GUEST_PANICKED = "guest-panicked"  # pvpanic with the panic action "pause"

    @property
    def running(self) -> bool:
        return self is RunState.RUNNING


@dataclass(frozen=True)
class MachineInfo:
    """Static facts for ``query-target``/``query-machines`` and the TUI header."""

    name: str
    machine: str = "microvm"
    arch: str = "x86_64"
    vcpus: int = 1
    memory: int = 0  # bytes


@dataclass(frozen=True)
class CpuInfo:
    index: int
    thread_id: int
    halted: bool = False
    socket_id: int = 0
    core_id: int = 0
    thread_in_core: int = 0


@dataclass(frozen=True)
class BlockdevSpec:
    """``blockdev-add`` (hot-replace: registers a backend for a later ``device_add``)."""

    node_name: str
    filename: str
    read_only: bool = False
    direct: bool = True
    iops: int | None = None
    discard: str = "ignore"  # QEMU's default; "unmap" passes the guest's discards to the file


@dataclass(frozen=True)
class NetdevSpec:
    """``netdev_add``: a tap by ``ifname``, or tap fds the client handed over with ``getfd``.

    ``fds`` are open descriptors, already taken from the client's table: ``netdev_add`` owns
    them from the call on, and closes them when it refuses.
    """

    id: str
    ifname: str | None = None
    fds: tuple[int, ...] = ()
    queues: int = 1


@dataclass(frozen=True)
class BlockInfo:
    """One block node (a drive or a ``blockdev-add`` backend) for ``query-block`` and friends.

    ``qdev`` is the device using it (None for a backend no device uses yet); ``counters`` are
    the device's own, in QEMU's ``BlockDeviceStats`` names (empty without a device).
    """

    node_name: str
    filename: str
    read_only: bool
    direct: bool
    size: int
    allocated: int
    iops: int = 0
    qdev: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    idle_ns: int | None = None


@dataclass(frozen=True)
class ChardevInfo:
    """``query-chardev``: QEMU's label/filename/frontend-open."""

    label: str
    filename: str
    frontend_open: bool


@dataclass(frozen=True)
class IoThreadInfo:
    """``query-iothreads``: the thread serving the iothread's event loop."""

    id: str
    thread_id: int


@dataclass(frozen=True)
class DeviceSpec:
    """``device_add`` on a microVM: put backend ``id`` into pre-created slot ``slot``.

    ``kind`` is "blk" or "net" (from the driver name); block slots are 0-3, net slots 0-1.
    """

    id: str
    driver: str
    kind: str
    slot: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceStats:
    """One row of the TUI's device table (``x-svlaunch-query-stats``)."""

    id: str
    kind: str
    counters: dict[str, int] = field(default_factory=dict)  # e.g. rx_bytes, reads, irqs


@dataclass(frozen=True)
class VmStats:
    uptime_s: float = 0.0
    devices: tuple[DeviceStats, ...] = ()
    vcpu_exits: tuple[int, ...] = ()


@runtime_checkable
class VmControl(Protocol):
    """What QMP can do to a VM. Implemented by the engine's VM object."""

    def info(self) -> MachineInfo: ...

    def status(self) -> RunState: ...

    def pause(self) -> None:
        """Stop all vCPUs; ``QmpError.wrong_state()`` if not running. Emit ``STOP``."""

    def resume(self) -> None:
        """Run the vCPUs; ``QmpError.wrong_state()`` if not paused. Emit ``RESUME``."""

    def quit(self) -> None:
        """Arrange for the process to exit 0 soon, after this call returns.

        The QMP layer has already replied and sent ``SHUTDOWN {guest:false,
        reason:host-qmp-quit}``; do not emit it again. Stopping the server's loop is fine.
        """

    def powerdown(self) -> None:
        """Ask the guest to power off (ACPI power button). Emits ``POWERDOWN`` if supported."""

    def reset(self) -> None:
        """``system_reset``: on a microVM, equivalent to shutdown (StratoVirt)."""

    def query_cpus(self) -> list[CpuInfo]: ...

    def balloon_set(self, target_bytes: int) -> None:
        """``QmpError.not_active("balloon")`` without an active balloon."""

    def balloon_query(self) -> int:
        """Current guest memory per the balloon, bytes; ``QmpError.not_active`` without one."""

    def blockdev_add(self, spec: BlockdevSpec) -> None: ...

    def blockdev_del(self, node_name: str) -> None: ...

    def netdev_add(self, spec: NetdevSpec) -> None: ...

    def netdev_del(self, netdev_id: str) -> None: ...

    def device_add(self, spec: DeviceSpec) -> None: ...

    def device_del(self, device_id: str) -> None:
        """Remove a hot-replaced device; emit ``DEVICE_DELETED {device, path}``."""

    def stats(self) -> VmStats: ...

    def query_block(self) -> list[BlockInfo]:
        """Every block node, drives first in plan order, then unused ``blockdev-add`` ones."""

    def query_chardevs(self) -> list[ChardevInfo]: ...

    def query_iothreads(self) -> list[IoThreadInfo]: ...

    def migrate(self, uri: str) -> None:
        """Snapshot the paused VM to ``file:DIR`` (written in the background)."""

    def query_migrate(self) -> dict[str, Any]:
        """``query-migrate``'s answer in QEMU's shape (``{"status": "none"}`` before any)."""

    def migrate_cancel(self) -> None:
        """Stop a snapshot being written (its files are removed); nothing otherwise."""


class EventSink(Protocol):
    """Where the VM reports QMP events (``QmpServer`` is one). Callable from any thread."""

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None: ...


class ClientFds:
    """The file descriptors one QMP client handed over, closed with the client (or when taken).

    Fds arrive with SCM_RIGHTS and wait in ``received`` until ``getfd`` names one; a named fd
    waits until ``netdev_add fds=NAME`` takes it or ``closefd`` closes it. Both are capped
    (``MAX_RECEIVED``, ``MAX_NAMED``): beyond the cap an arriving fd is closed at once and
    ``getfd`` is refused. Only names are looked up: a bare number never reaches an engine fd.
    """

    MAX_RECEIVED = 16
    MAX_NAMED = 16

    def __init__(self) -> None:
        self._received: deque[int] = deque()
        self._named: dict[str, int] = {}

    def receive(self, fds: list[int]) -> int:
        """Queue fds that came with a message; returns how many were over the cap (closed)."""
        dropped = 0
        for fd in fds:
            if len(self._received) < self.MAX_RECEIVED:
                self._received.append(fd)
            else:
                _close(fd)
                dropped += 1
        return dropped

    def take_received(self) -> int | None:
        return self._received.popleft() if self._received else None

    def name(self, name: str, fd: int) -> None:
        """``getfd``: keep ``fd`` as ``name``; an older fd of that name is closed (QEMU)."""
        if name not in self._named and len(self._named) >= self.MAX_NAMED:
            _close(fd)
            raise QmpError(
                f"Too many named file descriptors on this connection (limit {self.MAX_NAMED}); "
                "use them with netdev_add or release them with closefd"
            )
        old = self._named.pop(name, None)
        self._named[name] = fd
        if old is not None:
            _close(old)

    def close_named(self, name: str) -> None:
        """``closefd``."""
        fd = self._named.pop(name, None)
        if fd is None:
            raise QmpError(f"File descriptor named '{name}' not found")
        _close(fd)

    def has(self, name: str) -> bool:
        return name in self._named

    def take(self, name: str) -> int:
        """The fd named ``name``, removed from the table (the caller owns it now)."""
        fd = self._named.pop(name, None)
        if fd is None:
            raise QmpError(f"File descriptor named '{name}' has not been found")
        return fd

    @property
    def named(self) -> int:
        return len(self._named)

    def close_all(self) -> None:
        while self._received:
            _close(self._received.popleft())
        for fd in self._named.values():
            _close(fd)
        self._named.clear()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
