"""Engine logging with StratoVirt's ``-D`` semantics.

``-D`` absent: only warnings and errors, on stderr (the engine still says why it stops).
``-D`` without a file: log to stdout (StratoVirt's behaviour; its guidebook says stderr).
``-D FILE``: append to FILE, created 0640. The level comes from ``SVLAUNCH_LOG_LEVEL``
(trace/debug/info/warn/error; default error, as ``STRATOVIRT_LOG_LEVEL``); ``-v`` forces debug.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_ENV = "SVLAUNCH_LOG_LEVEL"
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(enabled: bool, path: str | None, verbose: bool = False) -> None:
    handler: logging.Handler
    if enabled:
        level = LEVELS.get(os.environ.get(LOG_ENV, "error").strip().lower(), logging.ERROR)
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
        else:
            handler = logging.StreamHandler(sys.stdout)
    else:
        level = logging.WARNING
        handler = logging.StreamHandler(sys.stderr)
    if verbose:
        level = logging.DEBUG
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
