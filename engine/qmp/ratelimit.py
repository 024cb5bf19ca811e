"""QMP flow control: StratoVirt's leaky bucket, per connection and per VM.

A bucket drains continuously at ``rate`` units per second; each admitted command pours one unit
in; a command that would overflow ``capacity`` is refused (``OperationThrottled``), not queued,
and does not count. The clock is injected so the rules are tested without sleeping.

StratoVirt keeps one bucket per connection (100 commands/s) and serves one connection per
socket, so a VM answers at most 100 commands/s per QMP socket. This server accepts several
clients per socket, so ``Admission`` keeps that per-VM bound explicitly: every client has its
own 100/s bucket, and all of them also pour into one VM bucket of 100/s per socket. A quiet
client (under ``QUIET`` commands in its last second) is admitted even when the VM bucket is
full, so one client flooding cannot lock ``svlaunch down`` out; at most ``MAX_CLIENTS`` such
clients exist, which bounds the total (docs/qmp.md, "Limits").
"""

from __future__ import annotations

import time
from collections.abc import Callable

THROTTLED_DESC = "More than 100 requests received during 1 second"
RATE = 100.0  # commands per second per connection, and per socket for the whole VM
QUIET = 10.0  # a client under this many commands in its last second is never throttled by others


class LeakyBucket:
    def __init__(
        self,
        rate: float = RATE,
        capacity: float = RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self.level = 0.0
        self._last = clock()

    def _drain(self) -> None:
        now = self._clock()
        self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now

    def room(self) -> bool:
        """Whether one more command fits now (counts nothing)."""
        self._drain()
        return self.level + 1.0 <= self.capacity

    def add(self) -> None:
        """Count one admitted command."""
        self.level += 1.0

    def allow(self) -> bool:
        """True if one more command fits now (and count it); False if it must be refused."""
        if not self.room():
            return False
        self.add()
        return True


class Admission:
    """The per-VM bound over every client's own bucket (see the module docstring)."""

    def __init__(self, sockets: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        total = RATE * max(1, sockets)
        self.vm = LeakyBucket(total, total, clock)
        self._clock = clock

    def client_bucket(self) -> LeakyBucket:
        return LeakyBucket(clock=self._clock)

    def admit(self, client: LeakyBucket) -> bool:
        """Admit one command of ``client`` (counted in both buckets) or refuse it (in neither)."""
        if not client.room():
            return False
        vm_room = self.vm.room()
        if not vm_room and client.level >= QUIET:
            return False
        client.add()
        if vm_room:
            self.vm.add()
        return True
