"""KASLR with the builtin engine: real Linux booted in the nested rig lands somewhere new each time.

The engine loads the kernel itself (no decompressor in the guest), so it randomizes as the
decompressor would (engine/machine/kaslr.py, docs/boot.md). One L1 run boots the Debian cloud
kernel four times with ``svlaunch up``: the bzImage twice and the ELF vmlinux once with KASLR, and
the bzImage once with ``nokaslr``. The guest (scripts/guest/init) reports its ``_text``
(/proc/kallsyms), the physical start of its code (/proc/iomem) and a direct-map RAM segment of
/proc/kcore (virtual minus physical: the direct map's base).
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from rigutil import GUEST, REPO, RigResult, run_rig_boots, svlaunch_up_cmd

pytestmark = pytest.mark.rig

MiB, GiB = 1 << 20, 1 << 30
RAM = 512 * MiB
ALIGN = 2 * MiB  # the kernel's CONFIG_PHYSICAL_ALIGN (setup header kernel_alignment), checked below
#: x86_64 4-level paging: the direct map's base without KASLR (__PAGE_OFFSET_BASE_L4)
DIRECT_MAP_BASE = 0xFFFF_8880_0000_0000
KASLR_BOOTS = ("bz-a", "bz-b", "elf")
#: The end of the kernel text mapping: __START_KERNEL_map + KERNEL_IMAGE_SIZE (1 GiB with KASLR)
KERNEL_MAP_END = 0xFFFF_FFFF_8000_0000 + GiB


@dataclass(frozen=True)
class Where:
    text: int  # virtual address of _text
    phys: int  # physical address of the kernel's code
    direct_map: int  # virtual address of physical 0 in the direct map

    @classmethod
    def of(cls, res: RigResult) -> Where:
        r = res.first("kaslr")
        va, pa = r.fields["ram"].split(":")
        return cls(int(r.fields["text"], 16), int(r.fields["phys"], 16), int(va, 16) - int(pa, 16))


def linked_text_and_phys() -> tuple[int, int]:
    """Where vmlinux was linked: its first PT_LOAD's virtual and physical addresses."""
    head = (GUEST / "vmlinux").read_bytes()[:4096]
    (phoff,) = struct.unpack_from("<Q", head, 32)
    _t, _f, _o, vaddr, paddr = struct.unpack_from("<IIQQQ", head, phoff)
    return vaddr, paddr


def manifest(path: Path, kernel: str, cmdline: str) -> Path:
    path.write_text(
        f'name = "rig-kaslr"\nserial = "stdio"\n[machine]\ntype = "microvm"\n[cpu]\ncpus = 1\n'
        f'[memory]\nsize = "{RAM // MiB}M"\n[boot]\nkernel = "{GUEST / kernel}"\n'
        f'initrd = "{GUEST / "initrd.img"}"\ncmdline = "{cmdline}"\n'
    )
    return path


@pytest.fixture(scope="module")
def boots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RigResult]:
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    tmp = tmp_path_factory.mktemp("kaslr")
    base = "console=ttyS0 quiet reboot=k panic=1 pci=off"
    cases = {
        "bz-a": ("vmlinuz", base),
        "bz-b": ("vmlinuz", base),
        "elf": ("vmlinux", base),
        "bz-nokaslr": ("vmlinuz", f"{base} nokaslr"),
    }
    manifests = {k: manifest(tmp / f"{k}.toml", kern, cmd) for k, (kern, cmd) in cases.items()}
    files = [GUEST / "vmlinuz", GUEST / "vmlinux", GUEST / "initrd.img", *manifests.values()]
    whole, each = run_rig_boots(
        [(k, svlaunch_up_cmd(m)) for k, m in manifests.items()], files=files, timeout=480
    )
    assert not whole.timed_out, whole.explain()
    return each


def test_every_boot_reports_and_powers_off(boots: dict[str, RigResult]) -> None:
    for label, res in boots.items():
        assert res.returncode == 0, f"{label}: {res.explain()}"
        assert res.done and res.first("kaslr").fields["ram"] != "-", f"{label}: {res.explain()}"


def test_nokaslr_boots_at_the_linked_addresses(boots: dict[str, RigResult]) -> None:
    text, phys = linked_text_and_phys()
    assert Where.of(boots["bz-nokaslr"]) == Where(text, phys, DIRECT_MAP_BASE)


def test_kaslr_boots_differ_from_each_other_and_from_nokaslr(boots: dict[str, RigResult]) -> None:
    fixed = Where.of(boots["bz-nokaslr"])
    seen = [Where.of(boots[b]) for b in KASLR_BOOTS]
    assert len(set(seen)) == len(seen), seen  # bzImage twice, the ELF once: three places
    assert fixed not in seen


def test_text_physical_place_and_direct_map_are_each_randomized(
    boots: dict[str, RigResult],
) -> None:
    """Each part moves: three boots all at the linked value would be a ~1e-7 coincidence."""
    fixed = Where.of(boots["bz-nokaslr"])
    seen = [Where.of(boots[b]) for b in KASLR_BOOTS]
    assert any(w.text != fixed.text for w in seen), seen  # the relocation table was applied
    assert any(w.phys != fixed.phys for w in seen), seen  # a random physical slot
    assert any(w.direct_map != fixed.direct_map for w in seen), seen  # KASLR_FLAG reached it


def test_every_place_is_one_the_decompressor_could_choose(boots: dict[str, RigResult]) -> None:
    text, phys = linked_text_and_phys()
    with open(GUEST / "vmlinuz", "rb") as f:
        hdr = f.read(0x264)
    assert struct.unpack_from("<I", hdr, 0x230)[0] == ALIGN  # kernel_alignment
    init_size = struct.unpack_from("<I", hdr, 0x260)[0]
    for b in KASLR_BOOTS:
        w = Where.of(boots[b])
        assert (w.text - text) % ALIGN == 0 and text <= w.text <= KERNEL_MAP_END - init_size, b
        assert w.phys % ALIGN == 0 and phys <= w.phys <= RAM - init_size, b
        assert w.direct_map % GiB == 0 and w.direct_map >= DIRECT_MAP_BASE, b  # PUD-aligned
