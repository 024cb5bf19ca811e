"""The Generic Event Device: how the host presses the guest's ACPI power button.

A HW-reduced guest has no fixed power button and no SCI; the DSDT (``engine.machine.acpi.ged``)
describes instead a GED whose interrupt makes the OS run ``_EVT``, which reads this device's
one-byte event-status register and notifies the ``PNP0C0C`` power button when bit 0 is set.
So a press is two steps: set the bit, then raise the GSI (an irqfd write, the kernel does the
edge). The register is read-to-clear, as Cloud Hypervisor's GED (``devices/src/acpi.rs``): each
event is seen once, and a guest that polls instead of taking the interrupt (the tests' tiny
guest) sees the same bits. Writes are ignored: a guest cannot make up events.

Thread-safe by its own lock: QMP presses from its thread while vCPU threads read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from engine.machine.acpi.ged import EVENT_POWER_BUTTON

__all__ = ["EVENT_POWER_BUTTON", "GedDevice"]


class GedDevice:
    """A PIO bus device: offset 0 is the event-status byte (read-to-clear)."""

    def __init__(self, raise_irq: Callable[[], None]) -> None:
        self._raise_irq = raise_irq
        self._lock = threading.Lock()
        self._pending = 0
        self.events_raised = 0

    @property
    def pending(self) -> int:
        """Event bits set and not yet read by the guest."""
        with self._lock:
            return self._pending

    def notify(self, events: int) -> None:
        """Latch ``events`` (bits of the status register) and interrupt the guest."""
        if not 0 < events <= 0xFF:
            raise ValueError(f"GED event bits {events:#x} must fit the 8-bit status register")
        with self._lock:
            self._pending |= events
            self.events_raised += 1
        self._raise_irq()

    def snapshot_state(self) -> int:
        """The latched event bits (a snapshot keeps a press the guest has not read yet)."""
        return self.pending

    def restore_state(self, pending: int) -> None:
        with self._lock:
            self._pending = pending & 0xFF

    def press_power_button(self) -> None:
        self.notify(EVENT_POWER_BUTTON)

    def read(self, offset: int, size: int) -> int:
        if offset != 0:
            return 0
        with self._lock:
            value, self._pending = self._pending, 0
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        return None
