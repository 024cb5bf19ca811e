"""Write initramfs archives (cpio "newc") without root and without the cpio tool.

Why our own writer: device nodes (/dev/console) and root ownership must be in the archive, which
`cpio -o` can only record when run as root from a real tree; and a writer that takes (archive path,
source) pairs lets the rig place host files at their absolute paths without staging a copy.
Archives concatenate: the kernel unpacks every archive appended to the initrd in order.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member; `data` is None for directories and device nodes."""

    name: str
    mode: int
    data: bytes | None = None
    mtime: int = 0
    rdev: tuple[int, int] = (0, 0)


class CpioWriter:
    """Streams newc members to a binary file, creating parent directories once each."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = {""}

    def _header(self, name: str, mode: int, size: int, mtime: int, rdev: tuple[int, int]) -> None:
        fields = (self._ino, mode, 0, 0, 1, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        head = b"070701" + b"".join(b"%08X" % f for f in fields)
        raw = head + name.encode() + b"\0"
        self._out.write(raw + b"\0" * (-len(raw) % 4))

    def _data(self, data: bytes) -> None:
        self._out.write(data + b"\0" * (-len(data) % 4))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                self._header(d, stat.S_IFDIR | 0o755, 0, 0, (0, 0))

    def add(self, entry: Entry) -> None:
        """Add one member; `name` may start with '/' (stored relative, as the kernel expects)."""
        name = entry.name.strip("/")
        if not name:
            return
        self._parents(name)
        if stat.S_ISDIR(entry.mode):
            if name in self._dirs:
                return
            self._dirs.add(name)
        data = entry.data or b""
        self._header(name, entry.mode, len(data), entry.mtime, entry.rdev)
        if data:
            self._data(data)

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.add(Entry(name, stat.S_IFDIR | mode))

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self.add(Entry(name, stat.S_IFREG | mode, data, mtime))

    def symlink(self, name: str, target: str) -> None:
        self.add(Entry(name, stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(Entry(name, stat.S_IFCHR | mode, rdev=(major, minor)))

    def host_path(self, name: str, src: str) -> None:
        """Copy a host file, symlink or directory (not followed) to `name`, keeping mode and mtime."""
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            self.symlink(name, os.readlink(src))
        elif stat.S_ISDIR(st.st_mode):
            self.add(Entry(name, stat.S_IFDIR | stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime)))
        elif stat.S_ISREG(st.st_mode):
            with open(src, "rb") as f:
                data = f.read()
            self.add(Entry(name, st.st_mode, data, int(st.st_mtime)))

    def tree(self, name: str, src: str, skip: tuple[str, ...] = ("__pycache__",)) -> None:
        """Copy a host directory tree under `name`, in sorted (reproducible) order."""
        self.host_path(name, src)
        if os.path.islink(src):
            return
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            rel = os.path.relpath(root, src)
            base = name if rel == "." else f"{name}/{rel}"
            for d in dirs:
                self.host_path(f"{base}/{d}", os.path.join(root, d))
            for f in sorted(files):
                self.host_path(f"{base}/{f}", os.path.join(root, f))

    def close(self) -> None:
        """Write the trailer; the stream stays open (the caller owns it)."""
        self._header(TRAILER, 0, 0, 0, (0, 0))
        self._out.write(b"\0" * (-self._out.tell() % 512) if self._out.seekable() else b"")
