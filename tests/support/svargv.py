"""Helpers for the per-option tests in ``tests/unit/stratovirt/`` (one file per StratoVirt option).

``manifest(...)`` loads a small manifest with extra TOML, ``values(man, "-drive")`` is what
``svlaunch cmdline`` writes for one option, ``imported(...)`` reads a base argv plus the option
under test, ``rejected(...)`` is the first error of an argv the importer must refuse (message
line and ``argv:N:C`` mark; ``at(k)`` is the mark of the k-th extra element), and
``round_trip(man)`` checks ``import(cmdline(man)) == man``.
"""

from __future__ import annotations

import pytest

from launcher.compile.stratovirt.emit import emit_argv
from launcher.compile.stratovirt.importer import import_argv
from launcher.errors import InvalidInput
from launcher.manifest import load_text
from launcher.model import Manifest

BOOT = '[boot]\nkernel = "/boot/vmlinux"\ninitrd = "/boot/initrd.img"\n'
PFLASH = '[[pflash]]\nunit = 0\nfile = "/fw/OVMF_CODE.fd"\nreadonly = true\n'
MICROVM_ARGV = ["-machine", "microvm", "-kernel", "/boot/vmlinux", "-initrd", "/boot/initrd.img",
                "-qmp", "unix:/run/vm.qmp,server,nowait"]  # fmt: skip
Q35_ARGV = ["-machine", "q35", "-kernel", "/boot/vmlinux", "-initrd", "/boot/initrd.img",
            "-drive", "file=/fw/OVMF_CODE.fd,if=pflash,unit=0,readonly=on",
            "-qmp", "unix:/run/vm.qmp,server,nowait"]  # fmt: skip


def manifest(extra: str = "", *, top: str = "", q35: bool = False) -> Manifest:
    """A valid manifest (for ``svlaunch cmdline``): ``top`` holds top-level keys, ``extra``
    tables; ``q35`` adds the machine type and its firmware."""
    text = f'name = "vm"\nqmp = "/run/vm.qmp"\n{top}\n'
    text += ('[machine]\ntype = "q35"\n' if q35 else "") + BOOT + (PFLASH if q35 else "") + extra
    man, issues = load_text(text, "toml", "/vm/vm.toml", target="stratovirt")
    assert man is not None, [str(i) for i in issues]
    return man


def argv(man: Manifest) -> list[str]:
    return emit_argv(man)


def values(man: Manifest, option: str) -> list[str]:
    """The value of every occurrence of ``option`` in the emitted argv."""
    out = argv(man)
    return [out[i + 1] for i, a in enumerate(out[:-1]) if a == option]


def base(q35: bool = False) -> list[str]:
    return list(Q35_ARGV if q35 else MICROVM_ARGV)


def imported(*extra: str, q35: bool = False) -> Manifest:
    return import_argv([*base(q35), *extra]).manifest


def at(k: int, col: int = 0, q35: bool = False) -> str:
    """The mark of the k-th (1-based) extra element, column ``col`` in it."""
    return f"argv:{len(base(q35)) + k}" + (f":{col}" if col else "")


def rejected(*extra: str, q35: bool = False) -> tuple[str, str]:
    """(first error message line, its mark) of an argv the importer refuses."""
    with pytest.raises(InvalidInput) as info:
        import_argv([*base(q35), *extra])
    issue = next(i for i in info.value.issues if i.is_error)
    return issue.message.splitlines()[0], str(issue.mark)


def round_trip(man: Manifest) -> None:
    assert import_argv(["stratovirt", *emit_argv(man)]).manifest == man
