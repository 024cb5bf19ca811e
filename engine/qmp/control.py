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
import threading
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
    no_flush: bool = False
    iops: int | None = None


@dataclass(frozen=True)
class NetdevSpec:
    """``netdev_add``: a tap by ``ifname`` or by fds named through ``getfd`` (or numbers)."""

    id: str
    ifname: str | None = None
    fds: tuple[str, ...] = ()
    queues: int = 1


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

    def getfd(self, name: str, fd: int) -> None:
        """Take ownership of ``fd`` under ``name`` (replacing and closing an older one)."""

    def stats(self) -> VmStats: ...


class EventSink(Protocol):
    """Where the VM reports QMP events (``QmpServer`` is one). Callable from any thread."""

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None: ...


class FdTable:
    """Named file descriptors from ``getfd``; a helper for ``VmControl`` implementations."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, name: str, fd: int) -> None:
        with self._lock:
            old = self._fds.pop(name, None)
            self._fds[name] = fd
        if old is not None:
            os.close(old)

    def take(self, ref: str) -> int:
        """The fd named ``ref`` (last ``:``-component, as StratoVirt), or ``ref`` as a number."""
        key = ref.rsplit(":", 1)[-1]
        with self._lock:
            if key in self._fds:
                return self._fds.pop(key)
        if key.isdigit():
            return int(key)
        raise QmpError(f"File descriptor named '{key}' has not been found")

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
