"""Rendering of errors and issues for people (text) and machines (JSON)."""

from __future__ import annotations

import sys
from typing import TextIO

from launcher.errors import InvalidInput, SvlaunchError


def print_error(exc: SvlaunchError, file: TextIO | None = None) -> None:
    """One clear message on stderr: every issue for invalid input, else the message and hint."""
    out = file or sys.stderr
    if isinstance(exc, InvalidInput):
        for issue in exc.issues:
            print(str(issue), file=out)
        return
    print(f"svlaunch: {exc}", file=out)
