"""A chardev's output queue: device models queue guest bytes, the event loop writes them in chunks.

Why: a write(2) per guest byte on the vCPU thread that stored THR made the console the largest
cost of a verbose boot (docs/console.md). Here the writer (any thread: a vCPU, a device loop)
only appends to a bounded buffer; the chardev's event loop writes it out, one write per line or
per ``delay``. The policy, which docs/console.md states for users:

- **Bounded.** At most ``limit`` bytes wait. ``room()`` says how many more a front end may queue
  and ``write`` never takes more: the UART clears THRE when the room is below its FIFO, so a
  guest that honours THRE never loses a byte it was told was sent.
- **Off the writer's thread, few wake-ups.** A newline wakes the loop to write at once, unless
  the last write was less than ``gap`` ago; ``flush_size`` waiting bytes always do. Otherwise
  the first waiting byte after a pause arms a ``delay`` timer; after each write the timer is
  armed again for ``gap`` while output flows (a lookout: the next line's first byte wakes
  nobody, and a stream of lines costs a write per ``gap``, not one per line); when it fires, a
  partial line that is still growing (a line being printed) waits another ``delay``, up to
  ``max_wait``, so a line is not written in pieces; a prompt that stopped growing goes out at
  once.
- **Slow sink** (EAGAIN, short writes): the bytes stay queued and are retried every ``retry``;
  the queue fills, the front end holds the guest back (as a real UART at a slow baud rate) and
  no thread blocks. ``on_room`` tells the front end when half the queue is free again.
- **No sink** (a socket server with no client) or **a failed one** (EPIPE, ECONNRESET): queued
  bytes are discarded and counted in ``dropped``, as a UART with no cable attached.
- **Stuck sink** (takes nothing for ``stall`` seconds while bytes wait): treated as absent until
  it takes a whole chunk again, so a reader that stopped reading holds the guest back for at
  most ``stall`` seconds and never grows memory.
- **Close** (guest power-off, quit): the bytes still queued are written, waiting up to ``drain``
  seconds for a slow sink.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from engine.logsetup import get_logger

log = get_logger(__name__)

#: ``send`` returns this when there is no sink at all (the bytes go nowhere, counted as dropped)
NO_SINK = -1

LIMIT = 64 * 1024  # bytes waiting at most per chardev (one unix-socket or pipe buffer's worth)
FLUSH_SIZE = 4096  # this many waiting bytes flush at once, newline or not
DELAY = 0.01  # the timer a burst of output arms (a prompt or an echo waits 1-2 of these)
GAP = 0.05  # a newline writes at once unless the last write is younger than this; output that
# keeps flowing is written once per GAP (each write wakes the reader: docs/console.md, Measured)
MAX_WAIT = 0.1  # a growing partial line is held this long at most
RETRY = 0.005  # a sink that would block is tried again this often
STALL = 2.0  # a sink that takes nothing this long counts as absent until it reads again
DRAIN = 2.0  # at close, wait this long at most for a slow sink to take the last bytes
PASSES = 4  # writes per flush at most (bytes queued meanwhile scheduled their own flush)

Send = Callable[[bytes], int]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Loop(Protocol):
    """What the queue needs from ``engine.eventloop.EventLoop``."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class OutputQueue:
    """Guest output on its way to one sink. ``write``/``put_byte``/``room``: any thread;
    ``attach``/``flush``: the loop's thread; ``close``: any thread once the loop has stopped."""

    def __init__(
        self,
        send: Send,
        *,
        name: str = "chardev",
        on_gone: Callable[[], None] | None = None,
        limit: int = LIMIT,
        flush_size: int = FLUSH_SIZE,
        delay: float = DELAY,
        gap: float = GAP,
        max_wait: float = MAX_WAIT,
        retry: float = RETRY,
        stall: float = STALL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.name = name
        self._on_gone = on_gone
        self.limit = limit
        self._flush_size = flush_size
        self._delay = delay
        self._gap = gap
        self._max_wait = max_wait
        self._last_flush = float("-inf")
        self._armed_at = 0.0  # when the current burst's timer was armed
        self._tick_len = 0  # the queue's length at the last tick (is a line still growing?)
        self._retry = retry
        self._stall = stall
        self._clock = clock
        self.on_room: Callable[[], None] | None = None
        self._resume_at = limit // 2
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._loop: Loop | None = None
        self._timer: Timer | None = None  # the pending call_later handle (loop thread)
        self._scheduled = False  # a flush or timer is on its way (writers wake the loop once)
        self._urgent = False  # an immediate flush is on its way
        self._blocked_since: float | None = None
        self._stalled = False
        self._want_room = False
        self._closed = False
        #: bytes the sink never got (no sink, failed, stuck) and bytes refused for want of room
        self.dropped = 0
        self.refused = 0
        self.sent = 0
        self.writes = 0

    # -- writers (any thread) ---------------------------------------------------------------------

    def room(self) -> int:
        """Bytes ``write`` would take now."""
        return 0 if self._closed else self.limit - len(self._buf)

    def pending(self) -> int:
        return len(self._buf)

    def write(self, data: bytes) -> int:
        """Queue at most ``room()`` bytes of ``data``; returns how many were taken."""
        with self._lock:
            n = 0 if self._closed else min(len(data), self.limit - len(self._buf))
            if n < len(data):
                self.refused += len(data) - n
                self._want_room = True
            if n == 0:
                return 0
            self._buf += data if n == len(data) else data[:n]
            wake = self._wake(b"\n" in data[:n])
        if wake is not None:
            wake()
        return n

    def put_byte(self, value: int) -> bool:
        """Queue one byte (the UART's THR); False when there is no room."""
        with self._lock:
            if self._closed or len(self._buf) >= self.limit:
                self.refused += 1
                self._want_room = True
                return False
            self._buf.append(value)
            wake = self._wake(value == 0x0A)
        if wake is not None:
            wake()
        return True

    def _wake(self, newline: bool) -> Callable[[], None] | None:
        """What to tell the loop after queueing (under the lock): nothing, arm, or flush now."""
        if self.limit - len(self._buf) < self._resume_at:
            self._want_room = True
        loop = self._loop
        if loop is None or self._blocked_since is not None:
            return None  # attach flushes; a blocked sink has its retry timer
        full = len(self._buf) >= self._flush_size
        if (full or (newline and self._clock() - self._last_flush >= self._gap)) and not (
            self._urgent
        ):
            self._urgent = self._scheduled = True
            return lambda: loop.call_soon_threadsafe(self.flush)
        if not self._scheduled:
            self._scheduled = True
            return lambda: loop.call_soon_threadsafe(self._arm)
        return None

    # -- the loop's side ---------------------------------------------------------------------------

    def attach(self, loop: Loop) -> None:
        """Flush on ``loop`` from now on (what was queued before goes out at its next turn)."""
        with self._lock:
            self._loop = loop
            waiting = bool(self._buf)
            self._scheduled = self._urgent = waiting
        if waiting:
            loop.call_soon_threadsafe(self.flush)

    def _arm(self, delay: float | None = None) -> None:
        if self._timer is None and self._loop is not None:
            self._armed_at = self._clock()
            self._tick_len = len(self._buf)
            self._timer = self._loop.call_later(self._delay if delay is None else delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        with self._lock:
            n = len(self._buf)
            if n == 0 and self._blocked_since is None:
                self._scheduled = False  # the lookout ends: the next byte wakes the loop
                return
            growing = (
                self._blocked_since is None
                and self._tick_len < n < self._flush_size
                and 0x0A not in self._buf
                and self._clock() - self._armed_at < self._max_wait
            )
        if growing and self._loop is not None:  # a line being printed: wait for its end
            self._tick_len = n
            self._timer = self._loop.call_later(self._delay, self._tick)
            return
        self.flush()

    def flush(self) -> None:
        """Write what waits, as far as the sink takes it (loop thread). While output flows the
        timer stays armed (a lookout): the next line's first byte then needs no wake-up."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._urgent = False
        freed = self._write_out()
        self._last_flush = self._clock()
        with self._lock:
            lookout = (freed or bool(self._buf)) and not self._closed
            if not lookout and self._timer is None:
                self._scheduled = False
        if lookout and self._timer is None:
            self._arm(self._gap)  # while output flows, a write per gap at most
        if freed:
            self._notify_room()

    def _write_out(self, *, closing: bool = False) -> bool:
        """One pass over the queue; True when it freed room. Arms the retry timer when the
        sink would block (not when ``closing``: ``close`` retries itself)."""
        freed = False
        for _ in range(PASSES):
            with self._lock:
                if not self._buf:
                    self._blocked_since = None
                    return freed
                chunk = bytes(self._buf[: self.limit])
            try:
                n = self._send(chunk)
            except BlockingIOError:
                n = 0
            except OSError as e:
                log.info("chardev %s: the sink failed (%s); output is dropped", self.name, e)
                self._discard()
                if self._on_gone is not None:
                    self._on_gone()
                return True
            if n == NO_SINK:
                self._discard()
                return True
            with self._lock:
                if n > 0:
                    del self._buf[:n]
                    self.sent += n
                    self.writes += 1
                    freed = True
                    self._blocked_since = None
                    if self._stalled and n == len(chunk):
                        self._stalled = False
                        log.info("chardev %s: the sink reads again", self.name)
                if n == len(chunk):
                    continue
                if self._stalled:
                    self.dropped += len(self._buf)
                    self._buf.clear()
                    return True
                now = self._clock()
                if self._blocked_since is None:
                    self._blocked_since = now
                elif now - self._blocked_since >= self._stall and not closing:
                    log.warning(
                        "chardev %s: the sink took nothing for %.1f s; dropping output until it "
                        "reads again",
                        self.name,
                        now - self._blocked_since,
                    )
                    self._stalled = True
                    self._blocked_since = None
                    self.dropped += len(self._buf)
                    self._buf.clear()
                    return True
                if closing:
                    return freed
                self._scheduled = True
            self._arm(self._retry)
            return freed
        return freed  # what came meanwhile has a flush of its own on the way (see _wake)

    def _discard(self) -> None:
        with self._lock:
            self.dropped += len(self._buf)
            self._buf.clear()
            self._blocked_since = None

    def _notify_room(self) -> None:
        with self._lock:
            ready = self._want_room and self.limit - len(self._buf) >= self._resume_at
            if ready:
                self._want_room = False
        if ready and self.on_room is not None:
            self.on_room()

    def close(self, drain: float = DRAIN) -> None:
        """The last flush: write what waits, giving a slow sink up to ``drain`` seconds; what
        it does not take by then is dropped. Later writes are refused."""
        with self._lock:
            self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        deadline = time.monotonic() + drain
        while True:
            self._write_out(closing=True)
            if not self._buf or self._stalled or time.monotonic() >= deadline:
                break
            time.sleep(self._retry)
        if self._buf:
            log.warning(
                "chardev %s: %d bytes of output not taken by the sink at close",
                self.name,
                len(self._buf),
            )
            self._discard()
