"""vCPU threads: the run loop and the pause/kick/stop path.

What one exit does (``handle_exit``, the PIO and MMIO exits, ``ExitContext``, the exit profile)
is ``vcpu_exits.py``. ``VcpuThread`` owns one ``VcpuFd``: created paused, it enters
the guest only after ``resume()``. A kick sets ``kvm_run.immediate_exit`` and then sends
``KICK_SIGNAL`` to the thread: if the thread is inside KVM_RUN the signal makes it return EINTR;
if it is about to enter, immediate_exit makes KVM_RUN return at once, so no kick is lost.
KVM_RUN goes through cffi (returns EINTR once; ``fcntl.ioctl`` retries on 3.14+).
"""

from __future__ import annotations

import enum
import errno
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.logsetup import get_logger
from engine.machine import kvm_sys as k
from engine.machine.kvm import KvmError, VcpuFd
from engine.machine.vcpu_exits import (
    ExitAction,
    ExitContext,
    ExitProfile,
    handle_exit,
    io_exit,
    mmio_exit,
)

if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)

KICK_SIGNAL = signal.SIGRTMIN + 1


# -- the thread -----------------------------------------------------------------------------------

_kick_installed = False
_kick_lock = threading.Lock()


def install_kick_handler() -> bool:
    """Give ``KICK_SIGNAL`` a C-level no-op handler; any thread, idempotent; True when in place.

    A kick needs a *handled* signal: an ignored or default-ignored one is dropped before it can
    interrupt ``KVM_RUN``, and the default action of a real-time signal kills the process.
    Python's ``signal.signal`` only works on the main thread, and a Python handler would run
    later on that thread anyway, so the handler is a C function installed with ``signal(3)``,
    which any thread may call: libc's ``abs``, which is pure and async-signal-safe (its int
    return is discarded, harmless on x86_64's ABI). Delivery interrupts ``KVM_RUN`` (EINTR).
    """
    global _kick_installed
    with _kick_lock:
        if _kick_installed:
            return True
        import ctypes

        from engine.libc import libc

        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        noop = ctypes.cast(libc.abs, ctypes.c_void_p).value
        old = libc.signal(int(KICK_SIGNAL), noop)
        if old == ctypes.c_void_p(-1).value:  # SIG_ERR
            log.warning("vCPU kick signal not installed: errno %d", ctypes.get_errno())
            return False
        _kick_installed = True
        return True


class VcpuState(enum.Enum):
    PAUSED = "paused"
    RUNNING = "running"
    STOPPED = "stopped"


class VcpuThread:
    """One vCPU on its own thread; starts parked (paused)."""

    def __init__(
        self,
        fd: VcpuFd,
        index: int,
        ctx: ExitContext,
        *,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self.fd = fd
        self.index = index
        self.ctx = ctx
        self._thread_init = thread_init
        self._cond = threading.Condition()
        self._want = VcpuState.PAUSED
        self._parked = False
        self._done = False
        #: work to run on this thread while it is parked (``call_parked``): (fn, result box)
        self._calls: list[tuple[Callable[[], Any], list[Any]]] = []
        self.halted = False
        self.native_id = 0
        ctx.get_rip = self._rip
        self._thread = threading.Thread(target=self._main, name=f"vcpu-{index}", daemon=True)
        install_kick_handler()  # before any kick can be sent, from whichever thread builds

    def _rip(self) -> int:
        try:
            return int(self.fd.get_regs().rip)
        except KvmError:
            return 0

    def start(self) -> None:
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._parked or self._done, timeout=5)

    def _main(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            if self._thread_init is not None:
                self._thread_init()
            self._loop()
        except Exception as e:  # a bug here must stop the VM, not vanish with the thread
            log.exception("vcpu %d failed", self.index)
            self.ctx.events.on_fatal(f"vcpu {self.index}: {e}")
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _wait_until_running(self) -> bool:
        """Park while paused (telling ``pause()`` so); False once the vCPU is to stop."""
        with self._cond:
            while self._want is VcpuState.PAUSED:
                self._parked = True
                self._run_calls()
                self._cond.notify_all()
                self._cond.wait()
            self._parked = False
            return self._want is not VcpuState.STOPPED

    def _run_calls(self) -> None:
        while self._calls:
            fn, box = self._calls.pop(0)
            try:
                box.append((True, fn()))
            except Exception as e:  # handed back to the caller of call_parked
                box.append((False, e))

    def call_parked(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on this vCPU's own thread while it is parked and return its result (a
        snapshot reads the vCPU's state there, after ``settle``). Raises ``RuntimeError`` when
        the vCPU is not parked (running or gone)."""
        with self._cond:
            if not self._parked or self._done or self._want is not VcpuState.PAUSED:
                raise RuntimeError(f"vcpu {self.index} is not paused")
            box: list[Any] = []
            self._calls.append((fn, box))
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: box or self._done, timeout=timeout):
                raise RuntimeError(f"vcpu {self.index} did not answer within {timeout:g} s")
            if not box:
                raise RuntimeError(f"vcpu {self.index} stopped")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def settle(self) -> None:
        """Complete an I/O exit KVM still holds (on this vCPU's thread, parked): KVM_RUN with
        immediate_exit finishes the instruction whose PIO/MMIO the VMM served and returns
        before any guest instruction runs (api.rst, KVM_RUN: "userspace should ensure that
        the operation is completed before performing a live migration")."""
        self.fd.set_immediate_exit(True)
        try:
            for _ in range(8):  # an MMIO access split across pages comes back once per piece
                reason = self.fd.run()
                if reason == k.KVM_EXIT_INTR:
                    return
                if reason not in (k.KVM_EXIT_IO, k.KVM_EXIT_MMIO):
                    raise KvmError(
                        "KVM_RUN", errno.EIO, f"vcpu {self.index}: exit {reason} while settling"
                    )
                handle_exit(reason, self.fd.run_struct, self.fd.run_map, self.ctx)
            raise KvmError(
                "KVM_RUN", errno.EIO, f"vcpu {self.index}: I/O did not complete while settling"
            )
        finally:
            self.fd.set_immediate_exit(False)

    def _halt(self) -> None:
        """The guest halted this vCPU: park it, unless a resume or stop was asked meanwhile."""
        self.halted = True
        with self._cond:
            if self._want is VcpuState.RUNNING:
                self._want = VcpuState.PAUSED

    def _loop(self) -> None:
        if self.ctx.profile is not None:
            self._loop_profiled(self.ctx.profile)
            return
        run, run_map, fd, ctx = self.fd.run_struct, self.fd.run_map, self.fd, self.ctx
        exits, running = ctx.exits, VcpuState.RUNNING
        mmio, io, intr = k.KVM_EXIT_MMIO, k.KVM_EXIT_IO, k.KVM_EXIT_INTR
        enter, exit_reason = fd.entry()  # VcpuFd.run without a method call per exit
        # ``_want`` is read without the lock while running: a pause or stop sets it, then kicks
        # (immediate_exit + signal), so KVM_RUN returns at once and the next turn sees it.
        while self._want is running or self._wait_until_running():
            reason = exit_reason(run_map, 8)[0] if enter() >= 0 else fd.run_failed()
            if reason == mmio:  # the hot exits (virtio registers, the UART): no dispatch layer
                exits[mmio] += 1
                mmio_exit(run_map, ctx)
                continue
            if reason == io:
                exits[io] += 1
                io_exit(run_map, ctx)
                continue
            if reason == intr:
                fd.set_immediate_exit(False)
                continue
            if handle_exit(reason, run, run_map, ctx) is ExitAction.STOP:
                self._halt()

    def _loop_profiled(self, prof: ExitProfile) -> None:
        """``_loop`` with timing around KVM_RUN and each exit (see ``ExitProfile``)."""
        import time

        run, run_map, fd = self.fd.run_struct, self.fd.run_map, self.fd
        clock = time.perf_counter
        while self._wait_until_running():
            t0 = clock()
            reason = fd.run()
            t1 = clock()
            prof.guest_s += t1 - t0
            if reason == k.KVM_EXIT_INTR:
                fd.set_immediate_exit(False)
                continue
            if reason == k.KVM_EXIT_IO:
                key = (f"io-{'out' if run.io.direction else 'in'}", int(run.io.port))
            elif reason == k.KVM_EXIT_MMIO:
                key = (f"mmio-{'w' if run.mmio.is_write else 'r'}", int(run.mmio.phys_addr))
            else:
                key = (k.EXIT_NAMES.get(reason, str(reason)), 0)
            action = handle_exit(reason, run, run_map, self.ctx)
            prof.by_key[key] += 1
            prof.vmm_s[key] = prof.vmm_s.get(key, 0.0) + clock() - t1
            if action is ExitAction.STOP:
                self._halt()

    def _kick(self) -> None:
        if self.fd.fd < 0:
            return
        self.fd.set_immediate_exit(True)
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive() and _kick_installed:
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def resume(self) -> None:
        with self._cond:
            if self._want is VcpuState.STOPPED:
                return
            self._want = VcpuState.RUNNING
            self._cond.notify_all()

    def pause(self, timeout: float = 5.0) -> bool:
        """Stop entering the guest and wait until the thread is parked."""
        with self._cond:
            if self._want is VcpuState.STOPPED:
                return True
            self._want = VcpuState.PAUSED
        self._kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._parked or self._done, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._want = VcpuState.STOPPED
            self._cond.notify_all()
        self._kick()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
