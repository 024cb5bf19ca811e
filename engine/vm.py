"""The running VM: lifecycle state, guest stop paths, and the ``VmControl`` face QMP talks to.

``Vm`` owns a ``Machine`` (built by ``engine.machine.builder``) and turns what the guest does
(poweroff, reset, triple fault, a panic, a fatal exit) into one orderly stop: the vCPU that saw
it reports here, the QMP events go out, and the main loop is told to return, so teardown
happens on the main thread. A microVM does not reboot (as StratoVirt): a reset ends it too.
How it ended is ``Vm.ending`` (``engine.ending``: the cause, the ``SHUTDOWN`` reason, the exit
code; 0 only for a guest poweroff or a stop the host asked for; docs/lifecycle.md).

``engine.qmp.control`` (the QMP vocabulary) is imported only when a QMP method runs, so a VM
reaches its first guest instruction without loading the QMP layer.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from engine.ending import Cause, Ending
from engine.logsetup import get_logger
from engine.machine.builder import Machine, build
from engine.plan import Plan

if TYPE_CHECKING:
    from typing import Any

    from engine.machine.hotplug import HotReplace
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

log = get_logger(__name__)

EXIT_GUEST_OK = 0

# RunState values (engine.qmp.control.RunState), kept as strings so start-up needs no QMP import.
PRELAUNCH, RUNNING, PAUSED, SHUTDOWN = "prelaunch", "running", "paused", "shutdown"
GUEST_PANICKED = "guest-panicked"
#: QEMU's answer to ``cont`` after a panic paused the VM
NEEDS_RESET = "Resetting the Virtual Machine is required"


def _qmp() -> Any:
    from engine.qmp import control

    return control


class _NullSink:
    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        log.debug("event %s %s", name, data or {})


class Vm:
    """One VM. ``start()`` builds it; ``run()`` serves its main loop until it stops."""

    def __init__(self, plan: Plan, *, sink: EventSink | None = None, **build_kwargs: Any) -> None:
        self.plan = plan
        self.sink: EventSink = sink or _NullSink()
        self.machine: Machine | None = None
        self._state = PRELAUNCH
        self._lock = threading.Lock()
        self._stopping = False
        self.exit_code: int | None = None
        self.stop_reason = ""
        #: how the VM ended (None while it runs)
        self.ending: Ending | None = None
        self._panicked = False
        self._crash_loaded = False
        self._first_run_wall: float | None = None
        self._started_at = 0.0
        self._build_kwargs = build_kwargs
        self._hot: HotReplace | None = None
        #: time.monotonic() of the first resume (the guest's first instruction), for start-up marks
        self.first_run_at: float | None = None
        #: the snapshot QMP ``migrate`` is writing or wrote (engine.snapshot.save), once asked
        self._migration: Migration | None = None

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

    # -- life -------------------------------------------------------------------------------------

    def start(self, *, paused: bool = False) -> None:
        """Build the VM (or, with the plan's ``incoming``, restore it: every check of the
        snapshot runs before KVM is touched) and run it unless ``paused``."""
        if self.plan.incoming:
            from engine.snapshot.restore import load

            loaded = load(self.plan)
            try:
                self.machine = build(self.plan, self, snapshot=loaded, **self._build_kwargs)
            finally:
                loaded.close()  # the guest's RAM mappings keep the file
        else:
            self.machine = build(self.plan, self, **self._build_kwargs)
        self._started_at = time.monotonic()
        balloon = self._device("balloon")
        if balloon is not None:  # the guest moved the balloon: BALLOON_CHANGED (any thread)
            balloon.on_change = lambda actual: self.sink.emit("BALLOON_CHANGED", {"actual": actual})
        if not paused:
            self.machine.resume()
            self._state = RUNNING
            self._ran()

    def run(self) -> int:
        """Serve the main loop on this thread until the VM stops; returns the exit code."""
        assert self.machine is not None
        if not self._stopping:
            self.machine.loop.run()
        return self.exit_code if self.exit_code is not None else EXIT_GUEST_OK

    def wait(self, timeout: float) -> int | None:
        """Run the loop for at most ``timeout`` seconds (tests); the exit code once stopped."""
        assert self.machine is not None
        end = time.monotonic() + timeout
        while not self._stopping and time.monotonic() < end:
            self.machine.loop.run_once(timeout=0.05)
        return self.exit_code if self._stopping else None

    def close(self) -> None:
        if self._migration is not None:
            self._migration.cancel()  # the writer reads guest RAM: it stops before RAM goes
        if self.machine is not None:
            self.machine.close()
            self.machine.loop.close()
            self.machine = None
        if self._hot is not None:
            self._hot.close()

    def _ran(self) -> None:
        if self.first_run_at is None:
            self.first_run_at = time.monotonic()
            self._first_run_wall = time.time()

    def _claim(self, cause: Cause, detail: str) -> bool:
        """Decide how the VM ends (the first caller wins; False for the others)."""
        with self._lock:
            if self._stopping:
                return False
            self._stopping = True
            self.ending = Ending(
                cause, detail, self._panicked, self._crash_loaded, self._first_run_wall
            )
            self.exit_code = self.ending.code
            self.stop_reason = detail
            self._state = SHUTDOWN
        return True

    def _shutdown(self, cause: Cause, *, event: bool = True) -> None:
        """After ``_claim``: ``SHUTDOWN`` (its ``guest`` and ``reason`` from the cause), then
        stop the vCPUs and the main loop."""
        if event:
            self.sink.emit("SHUTDOWN", {"guest": cause.guest, "reason": cause.value})
        m = self.machine
        if m is not None:
            for v in m.vcpus:
                v.stop(timeout=0)  # non-blocking from a vCPU thread: kick, no join
            m.loop.stop()

    # -- VmEvents (any thread) -----------------------------------------------------------------------

    def _end(self, cause: Cause, detail: str) -> None:
        if self._claim(cause, detail):
            self._shutdown(cause)

    def on_poweroff(self, source: str) -> None:
        log.info("%s: stopping", source)
        self._end(Cause.GUEST_SHUTDOWN, source)

    def on_reset(self, source: str) -> None:
        log.info("%s: a microVM does not reboot, stopping", source)
        if self._claim(Cause.GUEST_RESET, source):
            self.sink.emit("RESET", {"guest": True, "reason": Cause.GUEST_RESET.value})
            self._shutdown(Cause.GUEST_RESET)

    def on_triple_fault(self, source: str) -> None:
        log.warning("vm %s: %s: stopping", self.plan.name, source)
        self._end(Cause.GUEST_TRIPLE_FAULT, source)

    def on_guest_panic(self, crash_loaded: bool) -> None:
        """The guest reported a panic (pvpanic, KVM's crash event): the plan's panic action, as
        QEMU's ``-action panic=``: ``poweroff`` (stop: ``SHUTDOWN`` guest-panic), ``pause``
        (state guest-panicked: ``cont`` refused, ``quit``/``system_reset`` end it) or ``run``.
        ``crash_loaded``: a crash kernel takes over; only the event (its reboot ends the VM)."""
        pvpanic = self.plan.pvpanic
        action = pvpanic.on_panic if pvpanic is not None else "poweroff"
        with self._lock:
            if self._stopping:
                return
            if crash_loaded:
                self._crash_loaded = True
            else:
                self._panicked = True
                if action == "pause":
                    self._state = GUEST_PANICKED
        if crash_loaded:
            log.warning("vm %s: the guest panicked and loaded its crash kernel", self.plan.name)
            self.sink.emit("GUEST_CRASHLOADED", {"action": "run"})
            return
        log.warning("vm %s: the guest panicked (panic action: %s)", self.plan.name, action)
        if action == "poweroff":
            if self._claim(Cause.GUEST_PANIC, "the guest panicked"):
                self.sink.emit("GUEST_PANICKED", {"action": action})
                self.sink.emit("STOP")
                self._shutdown(Cause.GUEST_PANIC)
            return
        self.sink.emit("GUEST_PANICKED", {"action": action})
        if action == "pause":
            m = self.machine
            if m is not None:
                for v in m.vcpus:
                    v.pause(timeout=0)  # non-blocking: this may be the vCPU that panicked
            self.sink.emit("STOP")

    def on_fatal(self, message: str) -> None:
        log.error("vm %s: %s", self.plan.name, message)
        self._end(Cause.HOST_ERROR, message)

    def on_signal(self, signum: int) -> None:
        """SIGTERM or SIGINT: stop, as QEMU does (``SHUTDOWN`` reason ``host-signal``)."""
        import signal

        self._end(Cause.HOST_SIGNAL, f"{signal.Signals(signum).name} received")

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
