"""Coalesced UART output: the guest's console bytes leave in lines, not one write(2) per byte.

Why: every THR write is a guest exit, and writing its one byte to the chardev is a syscall that
also wakes the reader (svlaunch's console relay, a terminal). In the nested rig that cost
1-1.8 ms per byte, so printing a boot log cost more than the boot. Bytes are kept here and
written when a line ends, when ``limit`` bytes are pending, or ``delay`` seconds after the first
pending byte (a shell prompt or an echoed keystroke still shows within milliseconds). The
flusher is a thread of its own: the engine's event loop has no timers, and vCPU threads must not
sleep. Writes happen under one lock, so output keeps the guest's byte order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: How long a partial line may wait for the rest of it (seconds).
DELAY = 0.005
#: Flush at once past this many pending bytes.
LIMIT = 4096


class CoalescingWriter:
    """``write(bytes)`` from any thread; ``flush()``; ``close()`` flushes and stops the thread."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        delay: float = DELAY,
        limit: int = LIMIT,
        thread_init: Callable[[], None] | None = None,
        name: str = "serial-out",
    ) -> None:
        self._write = write
        self.delay = delay
        self.limit = limit
        self._thread_init = thread_init
        self._buf = bytearray()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self.writes = 0  # write(2) calls made, for tests and stats
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                self._emit(data)
                return
            was_empty = not self._buf
            self._buf += data
            if b"\n" in data or len(self._buf) >= self.limit:
                self._flush_locked()
            elif was_empty:
                self._cond.notify()

    def flush(self) -> None:
        with self._cond:
            self._flush_locked()

    def close(self) -> None:
        with self._cond:
            self._flush_locked()
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _emit(self, data: bytes) -> None:
        self.writes += 1
        self._write(data)

    def _flush_locked(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._emit(data)

    def _run(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        with self._cond:
            while not self._closed:
                if not self._buf:
                    self._cond.wait()
                    continue
                self._cond.wait(self.delay)  # the rest of the line may come (then it flushes)
                self._flush_locked()
