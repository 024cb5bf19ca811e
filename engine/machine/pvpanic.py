"""The pvpanic device: one I/O port through which the guest tells the host it panicked.

QEMU's ISA ``pvpanic`` (hw/misc/pvpanic-isa.c) at port 0x505, found by the guest through the
DSDT (``_HID "QEMU0001"``, ``engine.machine.acpi.dsdt.pvpanic_device``); on a microVM without
PCI, Linux's ``pvpanic-mmio`` driver binds that ACPI device and maps its I/O resource. The
protocol (Linux include/uapi/misc/pvpanic.h):

- a read returns the events the host handles; the driver keeps only those bits
  (``capability &= ioread8(base)``) and never sends another;
- a write is the event: bit 0 ``PVPANIC_PANICKED`` from the panic notifier, or bit 1
  ``PVPANIC_CRASH_LOADED`` instead when a crash kernel is loaded (kdump takes over next).

Both are handled, so both are advertised (``SUPPORTED``); bit 2 (``PVPANIC_SHUTDOWN``, newer
kernels) is not, so no guest sends it. What the VM does about an event is ``engine.vm``'s
business (the panic action); this model only decodes bytes. Unknown bits are ignored (a guest
may write anything: at most one log line per run says so).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.logsetup import get_logger
from engine.machine.layout import PVPANIC_PORT

__all__ = ["PVPANIC_PORT", "PvpanicDevice"]

log = get_logger(__name__)

PVPANIC_PORT_SIZE = 1
PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1
#: the events this device handles: what a guest read returns
SUPPORTED = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED
#: the DSDT id Linux's pvpanic-mmio driver matches (and QEMU gives its ISA device)
PVPANIC_HID = "QEMU0001"


class PvpanicDevice:
    """A one-port PIO bus device. ``on_event(crash_loaded)`` is called on the vCPU thread that
    wrote: ``crash_loaded`` False for PVPANIC_PANICKED, True for PVPANIC_CRASH_LOADED."""

    def __init__(self, on_event: Callable[[bool], None]) -> None:
        self._on_event = on_event
        self._warned = False
        self.events = 0  # every event byte seen (tests, query tools)

    def read(self, offset: int, size: int) -> int:
        return SUPPORTED if offset == 0 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        value &= 0xFF
        if value & ~SUPPORTED and not self._warned:
            self._warned = True
            log.warning("pvpanic: the guest wrote unknown event bits %#x (ignored)", value)
        # QEMU's order: a panic wins over a crash-loaded notice written in the same byte
        if value & PVPANIC_PANICKED:
            self.events += 1
            self._on_event(False)
        elif value & PVPANIC_CRASH_LOADED:
            self.events += 1
            self._on_event(True)
