"""Engine logging with StratoVirt's ``-D`` semantics, imported only when a line is logged.

``-D`` absent: only warnings and errors, on stderr (the engine still says why it stops).
``-D`` without a file: log to stdout (StratoVirt's behaviour; its guidebook says stderr).
``-D FILE``: append to FILE, created 0640. The level comes from ``SVLAUNCH_LOG_LEVEL``
(trace/debug/info/warn/error; default error, as ``STRATOVIRT_LOG_LEVEL``); ``-v`` forces debug.

``import logging`` is a visible part of an engine start (it pulls ``re``, ``traceback``, ``string``,
``weakref``...), and a VM that logs nothing never needs it. So the engine's modules take their
logger from ``get_logger(__name__)``: a ``LazyLogger`` that imports ``logging`` and applies the
configuration ``configure_logging`` recorded on the first call that logs.
"""

from __future__ import annotations

import _thread
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    from typing import Any

LOG_ENV = "SVLAUNCH_LOG_LEVEL"
LEVELS = {  # logging's level numbers (logging is not imported to name them)
    "trace": 10,
    "debug": 10,
    "info": 20,
    "warn": 30,
    "warning": 30,
    "error": 40,
}

_lock = _thread.allocate_lock()
_settings: tuple[bool, str | None, bool] | None = None  # recorded, not applied yet


def configure_logging(
    enabled: bool, path: str | None, verbose: bool = False, *, lazy: bool = False
) -> None:
    """Configure the root logger; ``lazy``: record it and apply it when a line is logged
    (or at once when ``logging`` is already loaded, so that its loggers are configured)."""
    global _settings
    with _lock:
        _settings = (enabled, path, verbose)
    if not lazy or "logging" in sys.modules:
        apply_logging()


def apply_logging() -> None:
    """Apply the recorded configuration (once; any thread)."""
    global _settings
    with _lock:
        settings, _settings = _settings, None
        if settings is not None:
            _apply(*settings)


def _level(enabled: bool, verbose: bool) -> int:
    if verbose:
        return 10
    if enabled:
        return LEVELS.get(os.environ.get(LOG_ENV, "error").strip().lower(), 40)
    return 30


def _apply(enabled: bool, path: str | None, verbose: bool) -> None:
    import logging

    handler: logging.Handler
    level = _level(enabled, verbose)
    if enabled:
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
        else:
            handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


class LazyLogger:
    """``logging.getLogger(name)``, made (with ``logging`` imported and configured) on the first
    attribute looked up: ``log.warning(...)``, ``log.isEnabledFor(...)``..."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real(), attr)

    def _real(self) -> logging.Logger:
        logger = self._logger
        if logger is None:
            import logging

            apply_logging()
            logger = self._logger = logging.getLogger(self.name)
        return logger

    def _dropped(self, level: int) -> bool:
        """A line at ``level`` that the recorded (not yet applied) configuration drops: no
        need to import ``logging`` to drop it (the engine's debug/info lines, by default)."""
        settings = _settings
        if self._logger is not None or settings is None:
            return False
        enabled, _path, verbose = settings
        return level < _level(enabled, verbose)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._dropped(10):
            self._real().debug(msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._dropped(20):
            self._real().info(msg, *args, **kwargs)


def get_logger(name: str) -> Any:
    """The engine modules' ``log = get_logger(__name__)`` (typed as ``logging.Logger``)."""
    return LazyLogger(name)
