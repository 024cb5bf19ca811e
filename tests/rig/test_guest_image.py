"""The guest image scripts/build-guest makes: the kernel in both forms and the report initrd."""

from __future__ import annotations

import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from rigutil import GUEST, REPO

MODULES = [
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio-rng",
    "virtio_balloon",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "evdev",
    "button",
    "pvpanic",
    "pvpanic-mmio",
]
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_DYNAMIC, PT_INTERP = 2, 3


@pytest.fixture(scope="module")
def guest() -> Path:
    """Build (or confirm) the image; build-guest is idempotent and fast when up to date."""
    subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    return GUEST


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, contents, (rdev major, minor)) for a newc archive."""
    out = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad newc magic at {pos}"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[pos : pos + size], (rmaj, rmin))
        pos += size
        pos += -pos % 4


def test_outputs_exist(guest: Path) -> None:
    for name in ("vmlinuz", "vmlinux", "initrd.img", "rootfs.ext4", "kernel-version", "config"):
        assert (guest / name).stat().st_size > 0, name
    with open(guest / "rootfs.ext4", "rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef", "rootfs.ext4 has no ext2/3/4 superblock magic"
    assert (guest / "kernel-version").read_text().strip().endswith("-cloud-amd64")


def test_vmlinuz_is_the_bzimage_whose_payload_is_vmlinux(guest: Path) -> None:
    bz = (guest / "vmlinuz").read_bytes()
    assert bz[0x202:0x206] == b"HdrS"
    start = ((bz[0x1F1] or 4) + 1) * 512
    off, length = struct.unpack_from("<II", bz, 0x248)
    payload = bz[start + off : start + off + length]
    assert payload[:4] == b"\x02\x21\x4c\x18"  # LZ4 legacy
    (size,) = struct.unpack("<I", payload[-4:])
    assert (guest / "vmlinux").stat().st_size == size


def test_vmlinux_is_an_elf_with_the_kernel_entry_and_a_pvh_note(guest: Path) -> None:
    elf = (guest / "vmlinux").read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1  # 64-bit little-endian
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", elf, 16)
    assert (e_type, e_machine) == (2, 62)  # EXEC, x86-64
    assert e_entry == 0x1000000
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    pvh = None
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, e_phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            desc = pos + 12 + (namesz + 3) // 4 * 4
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                pvh = struct.unpack_from("<I", elf, desc)[0]
            pos = desc + (descsz + 3) // 4 * 4
    assert pvh is not None and 0x1000000 <= pvh < 0x100000000, "no PVH entry note"


def test_initrd_has_init_busybox_console_and_modules_in_order(guest: Path) -> None:
    files = read_newc((guest / "initrd.img").read_bytes())
    mode, init, _ = files["init"]
    assert mode & 0o111 and init.startswith(b"#!/bin/sh")
    assert b"SVREPORT" in init and b"poweroff -f" in init
    assert b"svreport.wait=powerbutton" in init and b'"Power Button"' in init
    assert files["bin/busybox"][1][:4] == b"\x7fELF"
    assert files["bin/sh"][1] == b"busybox"  # applet symlink
    cmode, _, rdev = files["dev/console"]
    assert cmode & 0o170000 == 0o020000 and rdev == (5, 1)
    assert files["etc/svreport-modules"][1].decode().split() == MODULES
    for m in MODULES:
        assert files[f"lib/modules/{m}.ko"][1][:4] == b"\x7fELF", m


def elf_segment_types(elf: bytes) -> set[int]:
    phoff = struct.unpack_from("<Q", elf, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    return {struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)}


def test_initrd_has_svvsock_static_and_executable(guest: Path) -> None:
    """The guest's vsock echo runs with no libc in the initrd: a static x86-64 executable."""
    files = read_newc((guest / "initrd.img").read_bytes())
    mode, elf, _ = files["bin/svvsock"]
    assert stat.S_ISREG(mode) and mode & 0o111 == 0o111, oct(mode)
    assert elf == (guest / "svvsock").read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1  # 64-bit little-endian
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    assert (e_type, e_machine) == (2, 62), "not an x86-64 EXEC (static, non-PIE)"
    segments = elf_segment_types(elf)
    assert PT_INTERP not in segments and PT_DYNAMIC not in segments, "svvsock is not static"
    assert b"SVREPORT vsock %s ok bytes=" in elf  # the report format string
    init = files["init"][1]
    assert b"svvsock " in init and b"svreport.vsock=" in init


def test_rootfs_has_the_same_svvsock(guest: Path) -> None:
    res = subprocess.run(
        ["debugfs", "-R", "cat /bin/svvsock", str(guest / "rootfs.ext4")],
        capture_output=True,
        check=True,
    )
    assert res.stdout == (guest / "svvsock").read_bytes()


def run_svvsock(guest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(guest / "svvsock"), *args], capture_output=True, text=True, timeout=30
    )


def test_svvsock_rejects_bad_arguments(guest: Path) -> None:
    for args in [(), ("x",), ("1234", "0"), ("1234", "5", "extra"), ("99999999999",)]:
        res = run_svvsock(guest, *args)
        assert res.returncode == 2 and res.stdout == "", args
        assert "svvsock" in res.stderr, args


def test_svvsock_listens_then_gives_up_after_its_timeout(guest: Path) -> None:
    """Nobody connects on the host: it reports listening, then a fail line, and exits 1."""
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as e:
        pytest.skip(f"no AF_VSOCK on this host: {e}")
    res = run_svvsock(guest, "47001", "1")
    assert res.returncode == 1, res
    assert res.stdout.splitlines() == [
        "SVREPORT vsock_listening 47001",
        "SVREPORT vsock 47001 fail timeout",
    ]


def test_initrd_is_readable_by_gnu_cpio(guest: Path) -> None:
    res = subprocess.run(
        ["cpio", "-it", "--quiet"],
        input=(guest / "initrd.img").read_bytes(),
        capture_output=True,
        check=True,
    )
    names = res.stdout.decode().split()
    assert "init" in names and "lib/modules/virtio_blk.ko" in names


def test_build_guest_is_idempotent_and_quiet_when_up_to_date(guest: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in guest.iterdir() if p.is_file()}
    res = subprocess.run(
        [str(REPO / "scripts" / "build-guest")], capture_output=True, text=True, check=True
    )
    assert res.stderr == ""
    after = {p.name: p.stat().st_mtime_ns for p in guest.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".stamp"} == {
        k: v for k, v in before.items() if k != ".stamp"
    }
