"""One module per ``svlaunch`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import sys


def write_output(text: str, path: str | None) -> None:
    """``text`` into ``path`` (a command's ``-o FILE``), or to stdout when there is none."""
    if not path:
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        from launcher.errors import HostError

        raise HostError(
            f"cannot write {path}: {e.strerror}",
            hint="-o needs a writable file in an existing folder",
        ) from None
