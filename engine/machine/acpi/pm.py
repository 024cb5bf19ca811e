"""The power-management register the FADT points at: one I/O port for reset, sleep and wake status.

A HW-reduced guest has no PM1 blocks; it reboots by writing RESET_VALUE to the FADT reset
register and powers off by writing ``SLP_TYP<<2 | SLP_EN`` to the sleep control register
(ACPICA ``acpi_hw_extended_sleep``), with SLP_TYP taken from the DSDT ``_S5_`` package. Like
Cloud Hypervisor's ``AcpiShutdownDevice`` (devices/src/acpi.rs) all three registers share one
byte-wide port, so the engine needs one tiny device: on an 8-bit OUT to ``PM_PORT`` call
``pm_action(value)`` and reset or power off the VM; reads return 0 (no wake pending).

The values cannot collide: ACPICA first writes WAK_STS (0x80) to the sleep status register to
clear it, which ``pm_action`` ignores; the reset value 1 has SLP_EN (0x20) clear.
"""

from __future__ import annotations

from enum import Enum

#: The I/O port of the reset, sleep control and sleep status registers (as Cloud Hypervisor).
PM_PORT = 0x600
#: Width of each register, in bits (one byte; accesses are byte-sized).
PM_BIT_WIDTH = 8
#: FADT RESET_VALUE: writing it to the reset register reboots the guest.
RESET_VALUE = 0x01
#: Sleep control register fields (ACPI 6.5 §4.8.3.7): SLP_TYP in bits 4:2, SLP_EN bit 5.
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x1C
SLP_EN = 0x20
#: SLP_TYP of S5 (soft off), as the DSDT's ``_S5_`` package says.
S5_SLP_TYP = 5
#: The byte Linux writes to power off: (5 << 2) | SLP_EN.
POWEROFF_VALUE = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN
#: Sleep status register bit the guest writes to clear wake status (ignored).
WAK_STS = 0x80


class PmAction(Enum):
    RESET = "reset"
    POWEROFF = "poweroff"


def pm_action(value: int) -> PmAction | None:
    """What a guest byte written to ``PM_PORT`` asks for; None for anything else (ignore it)."""
    if value & SLP_EN:
        if (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLP_TYP:
            return PmAction.POWEROFF
        return None  # S1-S4 are not offered (no _S1_.._S4_ in the DSDT)
    if value == RESET_VALUE:
        return PmAction.RESET
    return None
