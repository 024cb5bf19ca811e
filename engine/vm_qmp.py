"""The ``VmControl`` face of a running VM: what QMP asks of it (run state, pause and resume,
snapshots, power button and reset, vCPUs, balloon, hot-replace, inventory, statistics).

Split from ``engine/vm.py`` at the thread boundary: these methods run on the QMP thread and
answer from the machine ``Vm`` built; ``vm.py`` keeps the lifecycle (build, run, the guest's
stop paths, the ending). ``Vm`` inherits this class, so a QMP handler calls the method itself
(no wrapper). ``engine.qmp.control`` (the QMP vocabulary) is imported only when one runs, so a
VM reaches its first guest instruction without loading the QMP layer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from engine.ending import Cause
from engine.logsetup import get_logger

if TYPE_CHECKING:
    from typing import Any

    from engine.machine.builder import Machine
    from engine.machine.hotplug import HotReplace
    from engine.plan import Plan
    from engine.qmp.control import (
        BlockdevSpec,
        BlockInfo,
        ChardevInfo,
        CpuInfo,
        DeviceSpec,
        EventSink,
        IoThreadInfo,
        MachineInfo,
        NetdevSpec,
        RunState,
        VmStats,
    )
    from engine.snapshot.save import Migration

log = get_logger("engine.vm")

# RunState values (engine.qmp.control.RunState), kept as strings so start-up needs no QMP import.
PRELAUNCH, RUNNING, PAUSED, SHUTDOWN = "prelaunch", "running", "paused", "shutdown"
GUEST_PANICKED = "guest-panicked"
#: QEMU's answer to ``cont`` after a panic paused the VM
NEEDS_RESET = "Resetting the Virtual Machine is required"


def _qmp() -> Any:
    from engine.qmp import control

    return control


class VmQmp:
    """QMP's half of ``engine.vm.Vm``; the attributes are set by ``Vm.__init__``."""

    plan: Plan
    sink: EventSink
    machine: Machine | None
    _state: str
    _stopping: bool
    _started_at: float
    _hot: HotReplace | None
    _migration: Migration | None

    if TYPE_CHECKING:  # the lifecycle's, in ``Vm``

        def _claim(self, cause: Cause, detail: str) -> bool: ...
        def _shutdown(self, cause: Cause, *, event: bool = True) -> None: ...
        def _ran(self) -> None: ...

    @property
    def hot(self) -> HotReplace:
        """The hot-replace state over the plan's replaceable slots (created on first use)."""
        if self._hot is None:
            from engine.machine.hotplug import HotReplace

            if self.machine is None:
                raise _qmp().QmpError("the VM is not built")
            self._hot = HotReplace(
                self.machine.devices, self.plan.devices, self.plan.name, self.plan.iothreads
            )
        return self._hot

    # -- VmControl (QMP thread) -------------------------------------------------------------------

    def info(self) -> MachineInfo:
        return _qmp().MachineInfo(
            name=self.plan.name,
            machine=self.plan.machine,
            arch=self.plan.arch,
            vcpus=len(self.plan.vcpus),
            memory=self.plan.memory.size,
        )

    def status(self) -> RunState:
        return _qmp().RunState(self._state)

    @property
    def prelaunch(self) -> bool:
        """Built and never started (``-S``): ``resume()`` is still to come."""
        return self._state == PRELAUNCH

    def pause(self) -> None:
        if self._state != RUNNING or self.machine is None:
            raise _qmp().QmpError.wrong_state()
        self.machine.pause()
        self._state = PAUSED
        self.sink.emit("STOP")

    def resume(self) -> None:
        if self._state == GUEST_PANICKED:
            raise _qmp().QmpError(NEEDS_RESET)
        if self._state not in (PAUSED, PRELAUNCH) or self.machine is None:
            raise _qmp().QmpError.wrong_state()
        if self._migration is not None and self._migration.active:
            raise _qmp().QmpError(
                "a snapshot is being written: the VM resumes once query-migrate says completed"
            )
        self.machine.resume()
        self._state = RUNNING
        self._ran()
        self.sink.emit("RESUME")

    def quit(self) -> None:
        """QMP ``quit`` (its handler has sent ``SHUTDOWN`` host-qmp-quit already)."""
        if self._claim(Cause.HOST_QMP_QUIT, "QMP quit"):
            self._shutdown(Cause.HOST_QMP_QUIT, event=False)

    # -- snapshots (QMP migrate; engine.snapshot) -------------------------------------------------

    def migrate(self, uri: str) -> None:
        """``migrate`` to ``file:DIR``: snapshot the paused VM (StratoVirt's template)."""
        from engine.errors import SvlaunchError
        from engine.snapshot.format import snapshot_folder
        from engine.snapshot.save import Migration, SnapshotRefused

        q = _qmp()
        try:
            folder = snapshot_folder(uri)
        except ValueError:
            raise q.QmpError(
                f"migrate: {uri!r}: the builtin engine writes snapshots to a folder only "
                "(file:DIR); unix: and tcp: live migration are not supported"
            ) from None
        if self.machine is None or self._stopping:
            raise q.QmpError.wrong_state()
        if self._state not in (PAUSED, PRELAUNCH):
            raise q.QmpError("migrate: the VM is running; pause it first (stop)")
        if self._migration is None:
            self._migration = Migration()
        if self._migration.active:
            raise q.QmpError("migrate: a snapshot is already being written (query-migrate)")
        try:
            self._migration.start(self.machine, folder)
        except SnapshotRefused as e:
            raise q.QmpError(f"migrate: this VM cannot be snapshotted: {e}") from None
        except SvlaunchError as e:
            raise q.QmpError(f"migrate: {e.message}") from None
        log.info("snapshot of %s to %s: started", self.plan.name, folder)

    def query_migrate(self) -> dict[str, Any]:
        return {"status": "none"} if self._migration is None else self._migration.query()

    def migrate_cancel(self) -> None:
        if self._migration is not None:
            self._migration.cancel()

    def powerdown(self) -> None:
        """``system_powerdown``: press the ACPI power button (the GED); the guest decides.

        As in QEMU, this only asks: the VM stops when the guest writes S5 to the PM port
        (``on_poweroff``), and a guest that ignores the button keeps running. Allowed while
        paused (the interrupt waits in the irqchip until the vCPUs resume).
        """
        m = self.machine
        if m is None or self._stopping:
            raise _qmp().QmpError.wrong_state()
        if m.devices.ged is None:
            raise _qmp().QmpError("system_powerdown: this machine has no ACPI power button")
        # The event goes out before the button is down: a guest that powers off at once would
        # otherwise have its SHUTDOWN reach clients ahead of the POWERDOWN that caused it.
        self.sink.emit("POWERDOWN")
        m.devices.ged.press_power_button()
        log.info("QMP system_powerdown: ACPI power button pressed")

    def reset(self) -> None:
        """A microvm does not reboot (StratoVirt: system_reset is a shutdown there), so the
        RESET is followed by the SHUTDOWN that ends the VM, as QEMU with -no-reboot says it."""
        cause = Cause.HOST_QMP_SYSTEM_RESET
        if self._claim(cause, "QMP system_reset"):
            self.sink.emit("RESET", {"guest": False, "reason": cause.value})
            self._shutdown(cause)

    def query_cpus(self) -> list[CpuInfo]:
        if self.machine is None:
            return []
        out = []
        cpu_info = _qmp().CpuInfo
        for vt, vp in zip(self.machine.vcpus, self.plan.vcpus, strict=True):
            out.append(
                cpu_info(
                    index=vp.index,
                    thread_id=vt.native_id,
                    halted=vt.halted,
                    socket_id=vp.package,
                    core_id=vp.core,
                    thread_in_core=vp.thread,
                )
            )
        return out

    def _device(self, kind: str) -> Any:
        if self.machine is not None:
            for att in self.machine.devices.virtio:
                if att.spec.kind == kind:
                    return att.transport.device
        return None

    def balloon_set(self, target_bytes: int) -> None:
        dev = self._device("balloon")
        if dev is None or not hasattr(dev, "set_target"):
            raise _qmp().QmpError.not_active("balloon")
        dev.set_target(target_bytes)  # QMP's value is the guest's memory, not the balloon's

    def balloon_query(self) -> int:
        dev = self._device("balloon")
        if dev is None or not hasattr(dev, "query"):
            raise _qmp().QmpError.not_active("balloon")
        return int(dev.query()["actual"])

    def _hotplug(self, call: Any) -> Any:
        """Run a hot-replace step, turning engine errors into QMP errors."""
        from engine.errors import SvlaunchError
        from engine.machine.hotplug import HotplugError

        q = _qmp()
        try:
            return call()
        except HotplugError as e:
            if e.not_found:
                raise q.QmpError(e.message, q.DEVICE_NOT_FOUND) from None
            raise q.QmpError(str(e)) from None
        except SvlaunchError as e:  # the factory's HostError (tap, file), DeviceError
            raise q.QmpError(str(e)) from None

    def blockdev_add(self, spec: BlockdevSpec) -> None:
        self._hotplug(lambda: self.hot.blockdev_add(spec))

    def blockdev_del(self, node_name: str) -> None:
        self._hotplug(lambda: self.hot.blockdev_del(node_name))

    def netdev_add(self, spec: NetdevSpec) -> None:
        self._hotplug(lambda: self.hot.netdev_add(spec))

    def netdev_del(self, netdev_id: str) -> None:
        self._hotplug(lambda: self.hot.netdev_del(netdev_id))

    def device_add(self, spec: DeviceSpec) -> None:
        self._hotplug(lambda: self.hot.device_add(spec))

    def device_del(self, device_id: str) -> None:
        self._hotplug(lambda: self.hot.device_del(device_id))
        # microvm: the slot is empty at once, and the event path is the id (StratoVirt)
        self.sink.emit("DEVICE_DELETED", {"device": device_id, "path": device_id})

    def query_block(self) -> list[BlockInfo]:
        if self.machine is None:
            return []
        from engine.machine import inventory

        unused = self._hot.unused_blockdevs() if self._hot is not None else []
        return inventory.block_nodes(self.machine, unused)

    def query_chardevs(self) -> list[ChardevInfo]:
        if self.machine is None:
            return []
        from engine.machine import inventory

        return inventory.chardevs(self.machine)

    def query_iothreads(self) -> list[IoThreadInfo]:
        if self.machine is None:
            return []
        from engine.machine import inventory

        return inventory.iothreads(self.machine)

    def stats(self) -> VmStats:
        if self.machine is None:
            return _qmp().VmStats()
        q = _qmp()
        devs = []
        for att in self.machine.devices.virtio:
            if att.spec.kind == "slot":
                continue  # an empty replaceable slot
            stats = getattr(att.transport.device, "stats", None)  # virtio DeviceStats
            counters = stats.snapshot() if stats is not None else {}
            devs.append(q.DeviceStats(att.spec.id, att.spec.kind, counters))
        return q.VmStats(
            uptime_s=time.monotonic() - self._started_at,
            devices=tuple(devs),
            vcpu_exits=tuple(sum(v.ctx.counts.values()) for v in self.machine.vcpus),
        )
