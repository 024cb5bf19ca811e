"""A small in-test ``VmControl``: real state transitions and events, no KVM (until the engine's VM
exists, the QMP server is tested against this; the same tests then run against the engine)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from engine.qmp.control import (
    BlockdevSpec,
    BlockInfo,
    ChardevInfo,
    CpuInfo,
    DeviceSpec,
    DeviceStats,
    EventSink,
    IoThreadInfo,
    MachineInfo,
    NetdevSpec,
    QmpError,
    RunState,
    VmStats,
)


class FakeVm:
    def __init__(self, name: str = "vm0", vcpus: int = 2, memory: int = 256 << 20) -> None:
        self.name = name
        self.state = RunState.RUNNING
        self.vcpus = vcpus
        self.memory = memory
        self.balloon: int | None = memory
        self.sink: EventSink | None = None
        self.blockdevs: dict[str, BlockdevSpec] = {}
        self.netdevs: dict[str, NetdevSpec] = {}
        self.devices: dict[str, DeviceSpec] = {}
        self.quit_called = threading.Event()
        self.powerdown_called = threading.Event()
        self.started = time.monotonic()
        self.delay = 0.0  # seconds each pause() takes (client-vanishes-mid-command tests)

    def _emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        if self.sink is not None:
            self.sink.emit(name, data or {})

    def info(self) -> MachineInfo:
        return MachineInfo(self.name, "microvm", "x86_64", self.vcpus, self.memory)

    def status(self) -> RunState:
        return self.state

    def pause(self) -> None:
        time.sleep(self.delay)
        if self.state is not RunState.RUNNING:
            raise QmpError.wrong_state()
        self.state = RunState.PAUSED
        self._emit("STOP")

    def resume(self) -> None:
        if self.state not in (RunState.PAUSED, RunState.PRELAUNCH):
            raise QmpError.wrong_state()
        self.state = RunState.RUNNING
        self._emit("RESUME")

    def quit(self) -> None:
        self.quit_called.set()

    def powerdown(self) -> None:
        self.powerdown_called.set()
        self.state = RunState.SHUTDOWN
        self._emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})

    def reset(self) -> None:
        self._emit("RESET", {"guest": True})

    def query_cpus(self) -> list[CpuInfo]:
        return [CpuInfo(i, os.getpid() + i, core_id=i) for i in range(self.vcpus)]

    def balloon_set(self, target_bytes: int) -> None:
        if self.balloon is None:
            raise QmpError.not_active("balloon")
        self.balloon = target_bytes
        self._emit("BALLOON_CHANGED", {"actual": target_bytes})

    def balloon_query(self) -> int:
        if self.balloon is None:
            raise QmpError.not_active("balloon")
        return self.balloon

    def blockdev_add(self, spec: BlockdevSpec) -> None:
        self.blockdevs[spec.node_name] = spec

    def blockdev_del(self, node_name: str) -> None:
        raise QmpError("blockdev_del not support yet")

    def netdev_add(self, spec: NetdevSpec) -> None:
        """Owns ``spec.fds`` (as the engine does): keeps them open until ``close``."""
        self.netdevs[spec.id] = spec

    def netdev_del(self, netdev_id: str) -> None:
        raise QmpError("netdev_del not support yet")

    def device_add(self, spec: DeviceSpec) -> None:
        known = self.blockdevs if spec.kind == "blk" else self.netdevs
        if spec.id not in known:
            raise QmpError(f"No backend '{spec.id}': add it with blockdev-add/netdev_add first")
        self.devices[spec.id] = spec

    def device_del(self, device_id: str) -> None:
        if self.devices.pop(device_id, None) is None:
            raise QmpError.not_found(device_id)
        self._emit("DEVICE_DELETED", {"device": device_id, "path": device_id})

    def stats(self) -> VmStats:
        return VmStats(
            time.monotonic() - self.started,
            (DeviceStats("blk0", "blk", {"reads": 5, "writes": 2}),),
            (10,) * self.vcpus,
        )

    def query_block(self) -> list[BlockInfo]:
        return [
            BlockInfo(name, spec.filename, spec.read_only, spec.direct, 1 << 20, 4096, 0, None)
            for name, spec in self.blockdevs.items()
        ]

    def query_chardevs(self) -> list[ChardevInfo]:
        return [ChardevInfo("serial0", "pty:/dev/pts/9", True)]

    def query_iothreads(self) -> list[IoThreadInfo]:
        return [IoThreadInfo("io0", threading.get_native_id())]

    def migrate(self, uri: str) -> None:
        raise QmpError("migrate: the fake VM has no state to snapshot")

    def query_migrate(self) -> dict[str, Any]:
        return {"status": "none"}

    def migrate_cancel(self) -> None:
        return None

    def close(self) -> None:
        for spec in self.netdevs.values():
            for fd in spec.fds:
                os.close(fd)
        self.netdevs.clear()
