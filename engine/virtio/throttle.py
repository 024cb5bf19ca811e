"""Rate limits and the loop timer they need: a token bucket and a timerfd.

Throttled devices (blk ``throttling.iops-total``, rng ``max-bytes``/``period``) never drop a
request: when the bucket is empty they stop popping their queue and arm a ``LoopTimer`` for the
moment enough tokens exist, so the waiting requests simply stay in the avail ring. The timer is a
kernel timerfd on the device's event loop (Python 3.11's ``os`` has no timerfd, hence ctypes),
so no thread sleeps and no Python runs while the guest waits.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"token bucket needs a positive rate and burst, got {rate}, {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def available(self) -> float:
        self._refill()
        return self._tokens

    def take(self, n: float) -> float:
        """Take ``n`` tokens and return 0, or take nothing and return the seconds until ``n`` exist.

        ``n`` larger than the burst is capped to the burst, so a big request waits for a full
        bucket instead of forever.
        """
        self._refill()
        n = min(n, self.burst)
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate

    def take_upto(self, n: int) -> int:
        """Take up to ``n`` whole tokens, as many as there are; returns how many were taken."""
        self._refill()
        got = min(n, int(self._tokens))
        self._tokens -= got
        return got


class Loop(Protocol):
    """The part of ``engine.eventloop.EventLoop`` a timer needs (made on the loop's thread)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None: ...


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_create.restype = ctypes.c_int
_libc.timerfd_settime.argtypes = (
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.c_void_p,
)
_libc.timerfd_settime.restype = ctypes.c_int


class LoopTimer:
    """A one-shot timer that calls ``callback`` on ``loop``'s thread. Arm/cancel from that thread."""

    def __init__(self, loop: Loop, callback: Callable[[], None]) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"timerfd_create: {os.strerror(e)}")
        self.fd = fd
        self._loop = loop
        self._callback = callback
        self.armed = False
        loop.add_reader(fd, self._fire)

    def arm(self, delay: float) -> None:
        """Fire once after ``delay`` seconds (at least 1 µs); re-arming moves the deadline."""
        ns = max(1000, int(delay * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        if _libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None) < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"timerfd_settime: {os.strerror(e)}")
        self.armed = True

    def cancel(self) -> None:
        if self.armed:
            spec = _Itimerspec()
            _libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None)
            self.armed = False

    def _fire(self) -> None:
        try:
            struct.unpack("<Q", os.read(self.fd, 8))
        except BlockingIOError:
            return
        self.armed = False
        self._callback()

    def close(self) -> None:
        if self.fd >= 0:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


class RateTimer:
    """The timer a rate-limited device (blk iops, rng bytes) waits on, made on its loop's thread.

    ``start`` is called at activation (from any thread); the timerfd is created on the device's
    loop, which owns it. ``arm``/``cancel``/``close`` are no-ops until then.
    """

    def __init__(self, lock: Any, on_ready: Callable[[], None]) -> None:
        self._lock = lock
        self._on_ready = on_ready
        self.timer: LoopTimer | None = None

    def start(self, loop: Loop | None) -> None:
        if loop is not None and self.timer is None:
            loop.call_soon_threadsafe(lambda: self._make(loop))

    def _make(self, loop: Loop) -> None:
        with self._lock:
            if self.timer is None:
                self.timer = LoopTimer(loop, self._on_ready)

    def arm(self, delay: float) -> bool:
        """Arm the timer; False when it does not exist yet (the caller retries at once)."""
        if self.timer is None:
            return False
        self.timer.arm(delay)
        return True

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
