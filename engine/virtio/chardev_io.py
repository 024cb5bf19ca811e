"""What virtio-console needs from a character backend, and an adapter for plain fds.

The serial-port engineer's backends (``engine.machine.chardev.Chardev``: stdio, pty, unix
socket, file) already have this shape: ``write`` never blocks the guest, and input is pushed to
``sink`` only while ``free()`` reports room, with ``resume_input()`` to restart polling. Any
object with ``fileno()/read/write`` (a pipe end, a socket) becomes such a backend through
``FdBackend``, which is what tests and ad-hoc tools use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.virtio.device import Loop

Sink = Callable[[bytes], int]
Free = Callable[[], int]


class LoopLike(Protocol):
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...


class CharBackend(Protocol):
    """Byte stream between a device and the host (``engine.machine.chardev.Chardev`` fits)."""

    def attach(self, loop: Loop, sink: Sink, free: Free) -> None:
        """Start polling input on ``loop``; call ``sink(data)`` with at most ``free()`` bytes."""

    def write(self, data: bytes) -> object:
        """Output from the guest; must not block. A backend with a bounded queue (``Chardev``)
        returns the bytes it took and has ``room()``/``notify_room()``; a plain one drops and
        counts what the reader cannot take now."""

    def resume_input(self) -> None:
        """The device has room again (called on the loop's thread)."""


class FileLike(Protocol):
    def fileno(self) -> int: ...


class FdBackend:
    """A ``CharBackend`` over one non-blocking fd (or an object with ``fileno()``)."""

    def __init__(self, f: int | FileLike) -> None:
        self.fd = f if isinstance(f, int) else f.fileno()
        os.set_blocking(self.fd, False)
        self.dropped = 0
        self._loop: LoopLike | None = None
        self._sink: Sink | None = None
        self._free: Free | None = None
        self._polling = False

    def attach(self, loop: LoopLike, sink: Sink, free: Free) -> None:
        self._loop, self._sink, self._free = loop, sink, free
        self.resume_input()

    def resume_input(self) -> None:
        if self._loop is not None and not self._polling:
            self._loop.add_reader(self.fd, self._on_readable)
            self._polling = True

    def _stop(self) -> None:
        if self._loop is not None and self._polling:
            self._loop.remove_reader(self.fd)
            self._polling = False

    def _on_readable(self) -> None:
        assert self._free is not None and self._sink is not None
        room = self._free()
        if room <= 0:
            self._stop()
            return
        try:
            data = os.read(self.fd, room)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop()
            return
        self._sink(data)

    def write(self, data: bytes) -> None:
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            n = 0
        self.dropped += len(data) - n

    def close(self) -> None:
        self._stop()
