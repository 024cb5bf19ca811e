"""StratoVirt's QMP flow control: a leaky bucket of 100 commands per second per connection.

Each accepted command pours one unit in; the bucket drains continuously at ``rate`` units per
second; a command that would overflow ``capacity`` is refused (``OperationThrottled``), not
queued, and does not count. The clock is injected so the rule is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

THROTTLED_DESC = "More than 100 requests received during 1 second"


class LeakyBucket:
    def __init__(
        self,
        rate: float = 100.0,
        capacity: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self.level = 0.0
        self._last = clock()

    def allow(self) -> bool:
        """True if one more command fits now (and count it); False if it must be refused."""
        now = self._clock()
        self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now
        if self.level + 1.0 > self.capacity:
            return False
        self.level += 1.0
        return True
