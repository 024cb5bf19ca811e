"""The running VM: lifecycle state, guest stop paths, and the ``VmControl`` face QMP talks to.

``Vm`` owns a ``Machine`` (built by ``engine.machine.builder``) and turns what the guest does
(poweroff, reset, triple fault, a panic, a fatal exit) into one orderly stop: the vCPU that saw
it reports here, the QMP events go out, and the main loop is told to return, so teardown
happens on the main thread. A microVM does not reboot (as StratoVirt): a reset ends it too.
How it ended is ``Vm.ending`` (``engine.ending``: the cause, the ``SHUTDOWN`` reason, the exit
code; 0 only for a guest poweroff or a stop the host asked for; docs/lifecycle.md).

What QMP asks of the VM (the ``VmControl`` face, on the QMP thread) is ``engine/vm_qmp.py``, a
base class of ``Vm``; ``engine.qmp.control`` (the QMP vocabulary) is imported only when a QMP
method runs, so a VM reaches its first guest instruction without loading the QMP layer.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from engine.ending import Cause, Ending
from engine.logsetup import get_logger
from engine.machine.builder import Machine, build
from engine.plan import Plan
from engine.vm_qmp import GUEST_PANICKED, PRELAUNCH, RUNNING, SHUTDOWN, VmQmp

if TYPE_CHECKING:
    from typing import Any

    from engine.machine.hotplug import HotReplace
    from engine.qmp.control import EventSink
    from engine.snapshot.save import Migration

log = get_logger(__name__)

EXIT_GUEST_OK = 0


class _NullSink:
    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        log.debug("event %s %s", name, data or {})


class Vm(VmQmp):
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
