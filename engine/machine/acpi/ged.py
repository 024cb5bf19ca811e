"""The AML of the power button a HW-reduced guest can see: a Generic Event Device and ``PWRB``.

A HW-reduced FADT has no fixed-feature power button (no PM1 event block, no SCI), so ACPI 6.5
§5.6.9 gives the platform one way to tell the OS about an event: a Generic Event Device
(``ACPI0013``) whose ``_CRS`` names an interrupt and whose ``_EVT`` method the OS runs when that
interrupt fires (Linux ``drivers/acpi/evged.c``). Ours, like Cloud Hypervisor's GED
(``devices/src/acpi.rs``), reads a small event-status register and, when the power-button bit
is set, does ``Notify(\\_SB.PWRB, 0x80)``; the control-method power button ``PNP0C0C`` is what
Linux's ``button`` driver binds, and a 0x80 notification becomes ``KEY_POWER`` on the input
device "Power Button". The register is one byte at an I/O port (``engine.machine.layout``),
read-to-clear: the engine's device model (``engine.machine.ged``) sets bits and raises the GSI.

The ASL this encodes (``iasl -d`` prints the same; tests/unit/test_ged_acpi.py checks it)::

    Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, Zero) }
    Device (GED0) {
        Name (_HID, "ACPI0013")
        Name (_UID, Zero)
        Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh,
                                                     Exclusive) { GSI } })
        OperationRegion (GDST, SystemIO, PORT, One)
        Field (GDST, ByteAcc, NoLock, Preserve) { GDAT, 8 }
        Method (_EVT, 1, Serialized) {
            Local0 = GDAT
            If ((Local0 & One)) { Notify (\\_SB.PWRB, 0x80) }
        }
    }

The few AML opcodes beyond ``aml``'s data constructs (OperationRegion, Field, Method, Store,
If, And, Notify, Local0) are encoded here, the only place that needs them (ACPI 6.5 §20.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.machine.acpi import aml

#: Event-status register bits (what ``_EVT`` tests). Bit 0: the power button was pressed.
EVENT_POWER_BUTTON = 0x01
#: The notification a control-method power button gets when pressed (ACPI 6.5 §5.6.6).
NOTIFY_STATUS_CHANGE = 0x80
GED_HID = "ACPI0013"
POWER_BUTTON_HID = "PNP0C0C"
GED_NAME = "GED0"
POWER_BUTTON_NAME = "PWRB"
POWER_BUTTON_PATH = "\\_SB.PWRB"
REGION_NAME = "GDST"
FIELD_NAME = "GDAT"

# -- opcodes (ACPI 6.5 §20.3) ----------------------------------------------------------------
OP_REGION_OP = 0x80  # after EXT_OP_PREFIX
FIELD_OP = 0x81  # after EXT_OP_PREFIX
METHOD_OP = 0x14
STORE_OP = 0x70
AND_OP = 0x7B
IF_OP = 0xA0
NOTIFY_OP = 0x86
LOCAL0_OP = 0x60
NULL_TARGET = 0x00
SPACE_SYSTEM_IO = 0x01
ACCESS_BYTE = 0x01  # FieldFlags AccessType; LockRule NoLock and UpdateRule Preserve are 0
METHOD_SERIALIZED = 0x08


@dataclass(frozen=True, slots=True)
class Ged:
    """A GED whose event-status byte is at I/O ``port`` and whose event interrupt is ``gsi``."""

    port: int
    gsi: int


def operation_region(name: str, space: int, offset: int, length: int) -> bytes:
    """``OperationRegion(name, space, offset, length)``."""
    return (
        bytes((aml.EXT_OP_PREFIX, OP_REGION_OP))
        + aml.name_string(name)
        + bytes((space,))
        + aml.integer(offset)
        + aml.integer(length)
    )


def _field_bits(bits: int) -> bytes:
    """A NamedField's width: the bit count in PkgLength form, which does not count itself.

    The byte count is chosen as for a package (value + its own bytes under the limit), as iasl
    does, so a disassembly compiles back to the same bytes.
    """
    if not 0 < bits < (1 << 28) - 4:
        raise ValueError(f"AML field of {bits} bits: must be 1..2**28-5")
    if bits + 1 < 1 << 6:
        return bytes((bits,))
    nbytes = next(n for n in (2, 3, 4) if bits + n < 1 << (4 + 8 * (n - 1)))
    out = [((nbytes - 1) << 6) | (bits & 0xF)]
    out += [(bits >> (4 + 8 * i)) & 0xFF for i in range(nbytes - 1)]
    return bytes(out)


def field(region: str, flags: int, *fields: tuple[str, int]) -> bytes:
    """``Field(region, flags) { name, bits, ... }`` (named fields, back to back)."""
    body = aml.name_string(region) + bytes((flags,))
    body += b"".join(aml.name_seg(n) + _field_bits(bits) for n, bits in fields)
    return bytes((aml.EXT_OP_PREFIX, FIELD_OP)) + aml.pkg_length(len(body)) + body


def method(name: str, nargs: int, *terms: bytes, serialized: bool = False) -> bytes:
    """``Method(name, nargs, Serialized|NotSerialized) { terms }`` (sync level 0)."""
    if not 0 <= nargs <= 7:
        raise ValueError(f"AML method {name}: {nargs} arguments, at most 7")
    flags = nargs | (METHOD_SERIALIZED if serialized else 0)
    body = aml.name_string(name) + bytes((flags,)) + b"".join(terms)
    return bytes((METHOD_OP,)) + aml.pkg_length(len(body)) + body


def store(source: bytes, target: bytes) -> bytes:
    """``Store(source, target)``, i.e. ``target = source``."""
    return bytes((STORE_OP,)) + source + target


def and_(a: bytes, b: bytes) -> bytes:
    """``And(a, b)`` with no target: the value, for a predicate."""
    return bytes((AND_OP,)) + a + b + bytes((NULL_TARGET,))


def if_(predicate: bytes, *terms: bytes) -> bytes:
    """``If (predicate) { terms }``."""
    body = predicate + b"".join(terms)
    return bytes((IF_OP,)) + aml.pkg_length(len(body)) + body


def notify(path: str, value: int) -> bytes:
    """``Notify(path, value)``."""
    return bytes((NOTIFY_OP,)) + aml.name_string(path) + aml.integer(value)


LOCAL0 = bytes((LOCAL0_OP,))


def power_button_device() -> bytes:
    """``Device(PWRB)``: the control-method power button Linux's ``button`` driver binds."""
    return aml.device(
        POWER_BUTTON_NAME,
        aml.name("_HID", aml.eisa_id(POWER_BUTTON_HID)),
        aml.name("_UID", aml.integer(0)),
    )


def ged_device(ged: Ged) -> bytes:
    """``Device(GED0)``: its interrupt, event-status register and ``_EVT`` method."""
    if not 0 <= ged.port <= 0xFFFF:
        raise ValueError(f"GED port {ged.port:#x} is not a 16-bit I/O port")
    evt = method(
        "_EVT",
        1,
        store(aml.name_string(FIELD_NAME), LOCAL0),
        if_(
            and_(LOCAL0, aml.integer(EVENT_POWER_BUTTON)),
            notify(POWER_BUTTON_PATH, NOTIFY_STATUS_CHANGE),
        ),
        serialized=True,
    )
    return aml.device(
        GED_NAME,
        aml.name("_HID", aml.string(GED_HID)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resource_template(aml.interrupt(ged.gsi, edge=True))),
        operation_region(REGION_NAME, SPACE_SYSTEM_IO, ged.port, 1),
        field(REGION_NAME, ACCESS_BYTE, (FIELD_NAME, 8)),
        evt,
    )


def ged_aml(ged: Ged) -> list[bytes]:
    """The terms to put under ``\\_SB``: the power button, then the GED that notifies it."""
    return [power_button_device(), ged_device(ged)]
