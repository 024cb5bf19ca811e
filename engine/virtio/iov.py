"""Scatter-gather I/O between host fds and guest memory views, without copies where possible.

``preadv``/``pwritev``/``readv``/``writev`` take at most IOV_MAX buffers and may transfer less
than asked; these helpers batch and loop so a device sees "all or an error". ``fallocate`` is
reached through ctypes because Python 3.11's ``os`` only has ``posix_fallocate`` (no modes).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence

IOV_MAX = 1024

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_libc.fallocate.restype = ctypes.c_int


_libc.preadv.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int64)
_libc.preadv.restype = ctypes.c_ssize_t
_libc.pwritev.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int64)
_libc.pwritev.restype = ctypes.c_ssize_t
_libc.readv.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
_libc.readv.restype = ctypes.c_ssize_t
_libc.writev.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
_libc.writev.restype = ctypes.c_ssize_t


def preadv_raw(fd: int, iov: bytes, count: int, offset: int) -> int:
    """preadv(2) on a packed ``struct iovec`` array (``chain.HostIovec.data``); raises OSError.

    One call, possibly short: callers check the count and take the view path for the rest.
    ``count`` must not exceed IOV_MAX (chains never carry more buffers).
    """
    n = _libc.preadv(fd, iov, count, offset)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def pwritev_raw(fd: int, iov: bytes, count: int, offset: int) -> int:
    """pwritev(2) on a packed ``struct iovec`` array; raises OSError; may be short."""
    n = _libc.pwritev(fd, iov, count, offset)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def readv_raw(fd: int, iov: bytes, count: int) -> int:
    """readv(2) into a packed ``struct iovec`` array (a tap: one frame per call); raises OSError
    (BlockingIOError on an empty non-blocking fd)."""
    n = _libc.readv(fd, iov, count)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def writev_raw(fd: int, iov: bytes, count: int) -> int:
    """writev(2) from a packed ``struct iovec`` array (a tap: one frame per call); raises OSError."""
    n = _libc.writev(fd, iov, count)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (punch hole, zero range); raises OSError."""
    if _libc.fallocate(fd, mode, offset, length) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes of a view list (after a short transfer)."""
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:] if n else v)
        n = 0
    return out


def preadv_full(fd: int, views: Sequence[memoryview], offset: int) -> int:
    """Fill ``views`` from ``fd`` at ``offset``; returns bytes read (short only at end of file)."""
    todo = list(views) if all(views) else [v for v in views if len(v)]
    done = 0
    while todo:
        batch = todo[:IOV_MAX]
        n = os.preadv(fd, batch, offset + done)
        if n == 0:
            break
        done += n
        if len(batch) == len(todo) and n == sum(map(len, batch)):
            break  # the usual case: all of it in one call (no per-buffer walk)
        todo = _advance(todo, n)
    return done


def pwritev_full(fd: int, views: Sequence[memoryview], offset: int) -> int:
    """Write all of ``views`` to ``fd`` at ``offset``; returns bytes written."""
    todo = list(views) if all(views) else [v for v in views if len(v)]
    done = 0
    while todo:
        batch = todo[:IOV_MAX]
        n = os.pwritev(fd, batch, offset + done)
        if n == 0:
            raise OSError(5, "pwritev wrote nothing")
        done += n
        if len(batch) == len(todo) and n == sum(map(len, batch)):
            break
        todo = _advance(todo, n)
    return done


def _pieces(
    views: Sequence[memoryview], skip: int, want: int
) -> Iterator[tuple[memoryview, int, int, int]]:
    """(view, offset in it, offset in the flat buffer, length) for ``want`` bytes from ``skip``."""
    pos = 0
    for v in views:
        if pos >= want:
            break
        if skip >= len(v):
            skip -= len(v)
            continue
        n = min(len(v) - skip, want - pos)
        yield v, skip, pos, n
        pos += n
        skip = 0


def copy_out(views: Sequence[memoryview], skip: int, dst: memoryview) -> None:
    """Copy ``len(dst)`` bytes from the view list, starting ``skip`` bytes in, into ``dst``."""
    for v, off, pos, n in _pieces(views, skip, len(dst)):
        dst[pos : pos + n] = v[off : off + n]


def copy_in(views: Sequence[memoryview], skip: int, src: memoryview) -> None:
    """Copy ``src`` into the view list starting ``skip`` bytes in."""
    for v, off, pos, n in _pieces(views, skip, len(src)):
        v[off : off + n] = src[pos : pos + n]
