"""The C library through ctypes, loaded once, and the errno check every raw libc call shares.

ctypes, not the cffi handle in ``engine.machine.kvm_sys``: it is in the standard library, so the
sandbox (also inside a fresh jail) and seccomp use it without loading the engine's cffi module.
"""

from __future__ import annotations

import ctypes
import os

#: the process's own C library; ``errno`` is saved per call (``ctypes.get_errno``)
libc = ctypes.CDLL(None, use_errno=True)


def check(ret: int, what: str) -> int:
    """``ret`` when the call succeeded; otherwise ``OSError(errno, "<what>: <strerror>")``."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret
