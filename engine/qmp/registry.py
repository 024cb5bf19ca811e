"""The QMP command table and the dispatcher that runs one command against a ``VmControl``.

Command modules (``engine/qmp/commands.py``, ``hotplug_commands.py``, ``queries.py``) register
handlers with ``@command``; ``engine.qmp.commands`` imports them all, so importing it gives the
whole table. A handler gets the dispatcher and the checked arguments and returns the reply's
value; it refuses with ``QmpError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.qmp.argspec import check_arguments
from engine.qmp.control import ClientFds, QmpError, VmControl
from engine.qmp.protocol import COMMAND_NOT_FOUND, GENERIC_ERROR, Command, ErrorReply, Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What to write back, and what to do once it is written (``quit`` exits after its reply)."""

    reply: Reply | ErrorReply
    after: Callable[[], None] | None = None


Handler = Callable[["Dispatcher", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}
#: commands that only ever refuse (with the reason): answered, but not listed by query-commands
REFUSED: set[str] = set()


def command(*names: str, refused: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
            if refused:
                REFUSED.add(n)
        return fn

    return register


class Dispatcher:
    """Runs commands against one VM. ``emit`` sends an event to every client; ``fds`` is the
    calling client's own fd table (``getfd``, ``netdev_add fds=``) during ``execute``."""

    def __init__(self, control: VmControl, emit: Callable[[str, dict[str, Any]], None]) -> None:
        self.control = control
        self.emit = emit
        self.fds = ClientFds()
        self._after: Callable[[], None] | None = None

    def execute(self, cmd: Command, fds: ClientFds | None = None) -> Outcome:
        handler = HANDLERS.get(cmd.name)
        if handler is None:
            return Outcome(
                ErrorReply(COMMAND_NOT_FOUND, f"The command {cmd.name} has not been found", cmd.id)
            )
        self.fds = fds if fds is not None else ClientFds()
        self._after = None
        try:
            check_arguments(cmd.name, cmd.arguments)
            value = handler(self, cmd.arguments)
        except QmpError as exc:
            return Outcome(ErrorReply(exc.error_class, exc.desc, cmd.id))
        except Exception as exc:  # an engine bug must not kill the server or the connection
            log.exception("QMP command %s failed", cmd.name)
            return Outcome(ErrorReply(GENERIC_ERROR, f"{cmd.name} failed: {exc}", cmd.id))
        return Outcome(Reply({} if value is None else value, cmd.id), self._after)

    def then(self, fn: Callable[[], None]) -> None:
        self._after = fn
