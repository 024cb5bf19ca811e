"""virtio-rng (virtio 1.2 §5.4): entropy from a host file, optionally rate limited.

Each request chain is filled with ``os.readv`` straight from the source file (``/dev/urandom``
by default) into guest memory. StratoVirt's ``max-bytes``/``period`` pair becomes a token bucket
of ``max_bytes`` per ``period_ms``: a request gets at most ``max_bytes`` (the spec lets the
device return fewer bytes than asked), waits until the bucket holds that much, and when the
bucket is empty the queue waits on a timer instead of spinning or dropping requests.

A request gets at most ``MAX_REQUEST`` bytes either way (Linux's driver asks for a few hundred
at a time): a chain of aliasing buffers may be gigabytes long, and filling it would cost the
host that much reading from the source.
"""

from __future__ import annotations

import os
import time

from engine.device_rules import DEFAULT_QUEUE_SIZE
from engine.errors import HostError
from engine.virtio.device import VIRTIO_ID_RNG, Loop, VirtioDevice
from engine.virtio.throttle import RateTimer, TokenBucket

#: The most entropy one request receives (the spec lets the device return fewer bytes).
MAX_REQUEST = 64 * 1024


class Rng(VirtioDevice):
    """One virtio-rng device with a single request queue."""

    device_id = VIRTIO_ID_RNG

    def __init__(
        self,
        name: str,
        filename: str = "/dev/urandom",
        *,
        max_bytes: int | None = None,
        period_ms: int | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        loop: Loop | None = None,
    ) -> None:
        try:
            self.fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise HostError(
                f"virtio-rng {name}: cannot open entropy source {filename}: {e.strerror}",
                hint="use filename=/dev/urandom or another readable file",
            ) from None
        super().__init__(name, [queue_size], 0, loop=loop)
        self.filename = filename
        self.bucket: TokenBucket | None = None
        if max_bytes:
            period = (period_ms or 1000) / 1000.0
            self.bucket = TokenBucket(max_bytes / period, max_bytes)
        self._timer = RateTimer(self.lock, self._resume)
        self._waiting_since: float | None = None

    def on_activate(self) -> None:
        if self.bucket is not None:
            self._timer.start(self.loop)

    def _resume(self) -> None:
        with self.lock:
            if self._waiting_since is not None:
                self.stats.throttled_s += time.monotonic() - self._waiting_since
                self._waiting_since = None
        self.guarded(self.process_queue, 0)

    def on_reset(self) -> None:
        self._timer.cancel()
        self._waiting_since = None

    def on_freeze(self) -> None:
        """Drop a pending wait (its request is back in the ring): ``thaw`` asks the bucket again."""
        self.on_reset()

    def close(self) -> None:
        self._timer.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def process_queue(self, index: int) -> None:
        q = self.queues[index]
        if not q.active or self._waiting_since is not None:
            return
        mem = self.mem
        assert mem is not None
        while (chain := q.pop()) is not None:
            want = min(chain.writable_len, MAX_REQUEST)
            if self.bucket is not None and want:
                want = int(min(want, self.bucket.burst))
                if self.bucket.take(want):  # not enough yet: wait for this whole request
                    q.undo_pop()
                    self._wait(want)
                    break
            n = 0
            if want:
                try:
                    n = os.readv(self.fd, chain.write_views(mem, 0, want))
                except BlockingIOError:
                    n = 0
                except OSError:
                    self.stats.errors += 1
                    n = 0
            self.stats.requests += 1
            self.stats.bytes_out += n
            q.add_used(chain, n)
        self.signal(index)

    def _wait(self, want: int) -> None:
        """Sleep on the timer until the bucket holds this request (or a full bucket)."""
        b = self.bucket
        assert b is not None
        delay = max(1.0 / b.rate, (min(want, b.burst) - b.available()) / b.rate)
        self._waiting_since = time.monotonic()
        if not self._timer.arm(delay):  # no loop (unit tests without one): wait inline
            time.sleep(delay)
            self.stats.throttled_s += time.monotonic() - self._waiting_since
            self._waiting_since = None
            self.process_queue(0)
