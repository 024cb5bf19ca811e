"""Standard-VM (q35/virt) hardware: PCIe root ports, pflash, VFIO and USB.

Part of ``launcher.model`` (which re-exports every name and loads this module on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.device_rules import IntRange
from launcher.keys import PATH, PCI, REQUIRED, key

if TYPE_CHECKING:
    from launcher.model_devices import PciAddress

BYTE = IntRange(0, 255)  # StratoVirt keeps port and chassis in 8 bits (it would wrap)
USB_PORTS = IntRange(1, 15)
PFLASH = "-drive if=pflash"


@dataclass(frozen=True, slots=True)
class RootPort:
    """``-device pcie-root-port``: a PCIe slot whose id names a new bus."""

    id: str = key(REQUIRED, "Root port id (the bus it creates).", sv=("pcie-root-port", "id"))
    port: int = key(
        REQUIRED,
        "Port number.",
        limits=BYTE,
        rule="root-port-range",
        sv=("pcie-root-port", "port"),
    )
    pci: PciAddress = key(REQUIRED, "PCI placement.", kind=PCI)
    chassis: int | None = key(
        None,
        "Chassis number (libvirt only).",
        limits=BYTE,
        rule="root-port-range",
        sv=("pcie-root-port", "chassis", "u8"),
    )


@dataclass(frozen=True, slots=True)
class Pflash:
    """``-drive if=pflash``: firmware code (unit 0) or variables (unit 1)."""

    unit: int = key(REQUIRED, "0 (firmware code) or 1 (variables).", sv=(PFLASH, "unit"))
    file: str = key(REQUIRED, "Flash image.", kind=PATH, io="input", sv=(PFLASH, "file"))
    readonly: bool = key(False, "Read-only (unit 0 usually is).", sv=(PFLASH, "readonly"))
    format: str = key("raw", "Image format (raw only).", values=("raw",), sv=(PFLASH, "format"))


@dataclass(frozen=True, slots=True)
class Vfio:
    """``-device vfio-pci``: a host PCI function passed through."""

    id: str = key(REQUIRED, "Device id.", sv=("vfio-pci", "id"))
    pci: PciAddress = key(REQUIRED, "PCI placement.", kind=PCI)
    host: str | None = key(
        None, "Host PCI address DDDD:BB:DD.F.", nonempty=True, sv=("vfio-pci", "host")
    )
    sysfsdev: str | None = key(
        None,
        "sysfs path of the device (instead of host).",
        kind=PATH,
        io="keep",
        sv=("vfio-pci", "sysfsdev"),
    )


@dataclass(frozen=True, slots=True)
class UsbController:
    """``-device nec-usb-xhci`` (it has no multifunction key)."""

    pci: PciAddress = key(REQUIRED, "PCI placement.", kind=PCI, values=("bus", "addr"))
    id: str = key("xhci", "Device id.", nonempty=True, sv="-device nec-usb-xhci,id=")
    p2: int | None = key(
        None,
        "USB 2 ports (StratoVirt's default: 4).",
        limits=USB_PORTS,
        rule="usb-ports",
        sv=("nec-usb-xhci", "p2", "u8"),
    )
    p3: int | None = key(
        None,
        "USB 3 ports (StratoVirt's default: 4).",
        limits=USB_PORTS,
        rule="usb-ports",
        sv=("nec-usb-xhci", "p3", "u8"),
    )


@dataclass(frozen=True, slots=True)
class UsbKeyboard:
    """``-device usb-kbd``."""

    id: str = key("kbd", "Device id.", nonempty=True, sv=("usb-kbd", "id"))


@dataclass(frozen=True, slots=True)
class UsbTablet:
    """``-device usb-tablet``."""

    id: str = key("tablet", "Device id.", nonempty=True, sv=("usb-tablet", "id"))
