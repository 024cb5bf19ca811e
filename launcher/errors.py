"""The launcher's error vocabulary: the engine's (``engine.errors``) plus command-line usage.

The engine is the lowest layer, so the shared classes live there and this module re-exports
them; ``launcher.cli.main`` is the single boundary that turns them into exit codes.
"""

from __future__ import annotations

from engine.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    EngineError,
    GuestMemoryError,
    HostError,
    InvalidInput,
    Issue,
    Mark,
    SvlaunchError,
)

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "EngineError",
    "GuestMemoryError",
    "HostError",
    "InvalidInput",
    "Issue",
    "Mark",
    "SvlaunchError",
    "UsageError",
]


class UsageError(SvlaunchError):
    """Bad command-line usage (exit code 2, no traceback)."""

    exit_code = EXIT_USAGE
