"""Every StratoVirt option and device type svlaunch reads has its emit/parse tests in this folder,
in a file named for it (``test_option_<option>.py``, ``test_option_device_<type>.py``) whose
docstring names the option, so a newcomer finds them by the option's name."""

from __future__ import annotations

import ast
from pathlib import Path

from launcher.compile.stratovirt.import_devices import DEVICES
from launcher.compile.stratovirt.tokens import LIBVIRT_IGNORED, STRATOVIRT_OPTIONS

HERE = Path(__file__).parent
#: options svlaunch refuses, so there is nothing to emit (tests/unit/test_import_argv.py)
REFUSED = {"-vnc", "-mod-test", "-freeze"}  # -freeze: an alias StratoVirt reads as -S


def _docs() -> dict[str, str]:
    return {
        p.name: ast.get_docstring(ast.parse(p.read_text())) or ""
        for p in HERE.glob("test_option_*.py")
    }


def test_every_option_has_its_tests() -> None:
    docs = _docs()
    wanted = [o for o in STRATOVIRT_OPTIONS if o not in LIBVIRT_IGNORED and o not in REFUSED]
    missing = [o for o in wanted if not any(f"``{o}" in d for d in docs.values())]
    assert missing == []


def test_every_device_type_has_its_file() -> None:
    names = set(_docs())
    family = {"virtconsole": "virtio_serial", "usb-kbd": "usb", "usb-tablet": "usb",
              "nec-usb-xhci": "usb"}  # fmt: skip
    missing = []
    for kind in DEVICES:
        base = family.get(kind) or kind.removesuffix("-device").removesuffix("-pci").replace(
            "-", "_"
        )
        if kind == "vfio-pci":
            base = "vfio_pci"
        if f"test_option_device_{base}.py" not in names:
            missing.append(kind)
    assert missing == []
