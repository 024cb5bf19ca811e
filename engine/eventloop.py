"""An epoll event loop for the engine's main thread and its iothreads.

Devices, chardev backends and the QMP server register file descriptors with a callback; the
loop calls back when they are readable. Other threads (vCPUs, QMP handlers) hand work to a loop
with ``call_soon_threadsafe``, which wakes it through an eventfd. ``call_later`` runs a callback
after a delay on the loop's own thread (the epoll timeout is the next deadline: no timerfd, no
extra syscall). One loop runs per thread; the manifest's iothreads are extra loops (``IoThread``).
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from engine.logsetup import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    Callback = Callable[[], None]

log = get_logger(__name__)


class TimerHandle:
    """A ``call_later`` callback; ``cancel()`` (on the loop's thread) keeps it from running."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Single-threaded epoll loop. All methods except ``call_soon_threadsafe``/``stop`` run on its thread."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._masks: dict[int, int] = {}  # what each fd is registered for
        self._pending: deque[Callback] = deque()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._running = False
        self._stopping = False
        self.thread_id: int | None = None

    # -- registration ---------------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (level-triggered)."""
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is writable (level-triggered: remove it once the
        output is flushed). A socket that never drains is its owner's to give up on."""
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | (
            select.EPOLLOUT if fd in self._writers else 0
        )
        old = self._masks.get(fd, 0)
        try:
            if not mask:
                self._masks.pop(fd, None)
                if old:
                    self._epoll.unregister(fd)
            elif old:
                try:
                    self._epoll.modify(fd, mask)
                except FileNotFoundError:  # closed without removal, and the number reused
                    self._epoll.register(fd, mask)
                self._masks[fd] = mask
            else:
                self._epoll.register(fd, mask)
                self._masks[fd] = mask
        except (OSError, ValueError):
            if mask:
                raise
            # removing an fd already closed: epoll dropped it

    def call_soon_threadsafe(self, callback: Callback) -> None:
        """Run ``callback`` on the loop's thread at its next turn (safe from any thread)."""
        self._pending.append(callback)
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass  # loop closed

    def call_later(self, delay: float, callback: Callback) -> TimerHandle:
        """Run ``callback()`` on this loop's thread ``delay`` seconds from now (loop thread only)."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (handle.when, next(self._timer_seq), handle))
        return handle

    def _next_timeout(self, timeout: float | None) -> float:
        """The epoll timeout: the caller's, shortened to the next live timer's deadline."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if self._pending:
            return 0
        if timers:
            due = max(0.0, timers[0][0] - time.monotonic())
            return due if timeout is None else min(timeout, due)
        return -1 if timeout is None else timeout

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if not handle.cancelled:
                self._dispatch(handle.callback)

    # -- running -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Dispatch until ``stop()``. A failing callback is logged, never fatal to the loop."""
        self._running = True
        self._stopping = False
        self.thread_id = threading.get_ident()
        try:
            while not self._stopping:
                self.run_once(timeout=None)
        finally:
            self._running = False

    def run_once(self, timeout: float | None = 0) -> None:
        try:
            events = self._epoll.poll(self._next_timeout(timeout))
        except InterruptedError:
            events = []
        for fd, mask in events:
            if fd == self._wake:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
                continue
            if mask != select.EPOLLOUT:  # readable, or hang-up/error: the reader sees it
                cb = self._readers.get(fd)
                if cb is not None:
                    self._dispatch(cb)
            if mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                wcb = self._writers.get(fd)
                if wcb is not None:
                    self._dispatch(wcb)
        if self._timers:
            self._run_timers()
        while self._pending:
            self._dispatch(self._pending.popleft())

    def _dispatch(self, cb: Callback) -> None:
        try:
            cb()
        except Exception:  # a device bug must not take the whole VM down
            log.exception("event loop %s: callback %r failed", self.name, cb)

    def stop(self) -> None:
        self._stopping = True
        self.call_soon_threadsafe(lambda: None)

    def close(self) -> None:
        self._epoll.close()
        os.close(self._wake)


class IoThread:
    """A named event loop on its own thread (StratoVirt's ``-object iothread,id=``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = EventLoop(name)
        self._thread = threading.Thread(target=self.loop.run, name=f"iothread-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def native_id(self) -> int:
        """The kernel thread id serving this iothread (QMP ``query-iothreads``), 0 before start."""
        return self._thread.native_id or 0

    def stop(self, timeout: float = 2.0) -> None:
        self.loop.stop()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
