"""The FADT power-management port: guest reset and poweroff become VM-level requests.

The ACPI tables (``engine.machine.acpi.pm``) point the FADT reset, sleep-control and sleep-status
registers at one byte-wide I/O port; this device decodes what the guest writes there
(``pm_action``) and calls the VM's ``on_reset``/``on_poweroff``. Reads return 0 (no wake
status pending). Other guest-visible stop paths (triple fault, KVM system events) are handled in
``vcpu.py`` and end in the same VM callbacks.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.machine.acpi.pm import PM_PORT, PmAction, pm_action

__all__ = ["PM_PORT", "PowerDevice"]


class PowerDevice:
    """A one-port bus device: ``out PM_PORT, value``."""

    def __init__(self, on_reset: Callable[[], None], on_poweroff: Callable[[], None]) -> None:
        self._on_reset = on_reset
        self._on_poweroff = on_poweroff

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        action = pm_action(value & 0xFF)
        if action is PmAction.POWEROFF:
            self._on_poweroff()
        elif action is PmAction.RESET:
            self._on_reset()
