"""``-kernel``, ``-initrd`` and ``-append`` (keys on ``launcher.model.Boot``)."""

from __future__ import annotations

from svargv import at, imported, manifest, rejected, round_trip, values

from engine.machine.layout import CMDLINE_MAX_SIZE


def test_both_ways() -> None:
    man = manifest(top="") if False else manifest()
    assert values(man, "-kernel") == ["/boot/vmlinux"] and values(man, "-initrd") == [
        "/boot/initrd.img"
    ]
    cmd = manifest().boot
    assert cmd.cmdline is None
    m2 = imported("-append", "console=ttyS0", "quiet")
    assert m2.boot.cmdline == "console=ttyS0 quiet"
    round_trip(m2)


def test_append_from_a_list() -> None:
    from launcher.manifest import load_text

    text = 'name = "vm"\nqmp = "/q"\n[boot]\nkernel = "/k"\ninitrd = "/i"\ncmdline = ["a=1", "b"]\n'
    man, _ = load_text(text, "toml", "/vm.toml", target="stratovirt")
    assert man is not None and values(man, "-append") == ["a=1 b"]


def test_import_refuses_a_command_line_the_kernel_cannot_take() -> None:
    got, mark = rejected("-append", "x" * CMDLINE_MAX_SIZE)
    assert f"takes at most {CMDLINE_MAX_SIZE - 1}" in got and mark == at(1)
