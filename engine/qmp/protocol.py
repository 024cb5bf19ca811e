"""QMP as a pure state machine: bytes in, events out, bytes back (h11's "bring your own I/O").

Nothing here touches a socket, a thread or a clock it was not given, so the whole protocol is
tested by joining a SERVER and a CLIENT connection in memory. The socket server
(``engine/qmp/server.py``), the CLI client (``launcher/qmpclient.py``) and the TUI all sit on
this one file.

States (both roles): GREETING → NEGOTIATION → COMMAND, plus CLOSED and ERROR.

* SERVER: ``send(Greeting)`` enters NEGOTIATION; the reply to ``qmp_capabilities`` enters
  COMMAND. StratoVirt accepts any command without negotiation, so ``strict=False`` (default)
  lets a first ordinary command enter COMMAND too; ``strict=True`` answers it like QEMU does
  (``CommandNotFound``: "Expecting capabilities negotiation with 'qmp_capabilities'").
  Events may be sent only in COMMAND (a client still negotiating would take an event for the
  capabilities reply: qemu.qmp does).
* CLIENT: receiving the greeting enters NEGOTIATION; the reply to its ``qmp_capabilities``
  enters COMMAND.

Framing (``engine/qmp/framing.py``): a stream of JSON objects, any whitespace between them; an
object may span reads and a read may hold several. Each object is capped (``max_message``),
nesting is capped. Bad input (a syntax error, an unfinished object past the cap, a duplicate
key, a lone surrogate, a number out of range, not an object, bad keys) becomes an
``InvalidInput`` event for the server to answer with an error; the framer resynchronises and
the connection goes on. A client treats bad input from its server as fatal.

Output: one compact JSON object per message followed by ``\\r\\n``, as StratoVirt writes it.
"""

from __future__ import annotations

import enum

from engine.qmp.framing import TOO_LONG, BadFrame, Framer
from engine.qmp.messages import (  # re-exported: the protocol's whole vocabulary in one place
    COMMAND_NOT_FOUND,
    DEVICE_NOT_ACTIVE,
    DEVICE_NOT_FOUND,
    ERROR_CLASSES,
    GENERIC_ERROR,
    KVM_MISSING_CAP,
    NEED_DATA,
    OPERATION_THROTTLED,
    STRATOVIRT_VERSION,
    TERMINATOR,
    Command,
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    InvalidInput,
    LocalProtocolError,
    QmpEvent,
    QmpProtocolError,
    RemoteProtocolError,
    Reply,
    Sentinel,
    encode,
    strict_loads,
)

__all__ = [
    "CLIENT_MAX_MESSAGE",
    "COMMAND_NOT_FOUND",
    "DEVICE_NOT_ACTIVE",
    "DEVICE_NOT_FOUND",
    "ERROR_CLASSES",
    "GENERIC_ERROR",
    "KVM_MISSING_CAP",
    "NEED_DATA",
    "OPERATION_THROTTLED",
    "SERVER_MAX_MESSAGE",
    "STRATOVIRT_VERSION",
    "TERMINATOR",
    "Command",
    "ConnectionClosed",
    "ErrorReply",
    "Event",
    "Greeting",
    "InvalidInput",
    "LocalProtocolError",
    "QmpConnection",
    "QmpEvent",
    "QmpProtocolError",
    "RemoteProtocolError",
    "Reply",
    "Role",
    "State",
    "encode",
]

SERVER_MAX_MESSAGE = 8192  # StratoVirt: "The socket message is too long."
CLIENT_MAX_MESSAGE = 16 << 20  # replies such as QEMU's query-qmp-schema are large


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    GREETING = "greeting"
    NEGOTIATION = "negotiation"
    COMMAND = "command"
    CLOSED = "closed"
    ERROR = "error"


# -- the connection -----------------------------------------------------------------------------


class QmpConnection:
    """One end of one QMP connection. Not thread-safe: one owner drives it."""

    def __init__(self, role: Role, *, strict: bool = False, max_message: int | None = None) -> None:
        self.role = role
        self.strict = strict
        self.state = State.GREETING
        limit = max_message or (SERVER_MAX_MESSAGE if role is Role.SERVER else CLIENT_MAX_MESSAGE)
        self._framer = Framer(limit)
        self._eof = False
        # SERVER: names of received, unanswered commands (replies go out in order).
        # CLIENT: names of sent commands awaiting replies.
        self._pending: list[str] = []
        self.greeting: Greeting | None = None

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means end of stream."""
        if self.state is State.ERROR:
            raise LocalProtocolError("receive_data after a protocol error")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream")
        self._framer.feed(data)

    def next_event(self) -> QmpEvent | Sentinel:
        """The next complete event, ``NEED_DATA``, or ``ConnectionClosed`` at end of stream."""
        if self.state is State.ERROR:
            raise LocalProtocolError("next_event after a protocol error")
        item = self._framer.next()
        if item is None:
            if self._eof:
                if self._framer.pending and self.role is Role.CLIENT:
                    self.state = State.ERROR
                    raise RemoteProtocolError("connection closed in the middle of a message")
                self.state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        if isinstance(item, BadFrame):
            if self.role is Role.CLIENT:
                self.state = State.ERROR
                raise RemoteProtocolError(f"server sent invalid JSON: {item.desc}")
            return InvalidInput(GENERIC_ERROR, item.desc)
        if self.role is Role.SERVER:
            return self._server_message(item)
        return self._client_message(item)

    def _server_message(self, text: bytes) -> QmpEvent:
        if len(text) > self._framer.max_message:
            return InvalidInput(GENERIC_ERROR, TOO_LONG)
        try:
            msg = strict_loads(text)
        except ValueError as exc:
            return InvalidInput(GENERIC_ERROR, f"Invalid JSON: {exc}")
        if not isinstance(msg, dict):
            return InvalidInput(GENERIC_ERROR, "QMP input must be a JSON object")
        cid = msg.get("id")
        for key in msg:
            if key not in ("execute", "arguments", "id"):
                return InvalidInput(GENERIC_ERROR, f"QMP input member '{key}' is unexpected", cid)
        name = msg.get("execute")
        if not isinstance(name, str):
            return InvalidInput(
                GENERIC_ERROR, "QMP input lacks member 'execute' (a command name string)", cid
            )
        args = msg.get("arguments", {})
        if not isinstance(args, dict):
            return InvalidInput(
                GENERIC_ERROR, "QMP input member 'arguments' must be an object", cid
            )
        if self.state is State.NEGOTIATION and name != "qmp_capabilities":
            if self.strict:
                return InvalidInput(
                    COMMAND_NOT_FOUND,
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                    cid,
                )
            self.state = State.COMMAND  # StratoVirt: no negotiation required
        if self.state is State.COMMAND and name == "qmp_capabilities" and self.strict:
            return InvalidInput(
                COMMAND_NOT_FOUND,
                "Capabilities negotiation is already complete, command ignored",
                cid,
            )
        self._pending.append(name)
        return Command(name, args, cid)

    def _client_message(self, text: bytes) -> QmpEvent:
        try:
            msg = strict_loads(text)
        except ValueError as exc:
            self.state = State.ERROR
            raise RemoteProtocolError(f"server sent invalid JSON: {exc}") from None
        if not isinstance(msg, dict):
            self.state = State.ERROR
            raise RemoteProtocolError(f"server sent a non-object: {text[:80]!r}")
        if self.state is State.GREETING:
            qmp = msg.get("QMP")
            if not isinstance(qmp, dict):
                self.state = State.ERROR
                raise RemoteProtocolError(f"expected the QMP greeting, got {text[:80]!r}")
            self.greeting = Greeting(
                dict(qmp.get("version") or {}), tuple(qmp.get("capabilities") or ())
            )
            self.state = State.NEGOTIATION
            return self.greeting
        if "event" in msg:
            ts = msg.get("timestamp") or {}
            return Event(
                str(msg["event"]),
                dict(msg.get("data") or {}),
                int(ts.get("seconds", 0)),
                int(ts.get("microseconds", 0)),
            )
        cid = msg.get("id")
        if "return" in msg:
            name = self._pending.pop(0) if self._pending else ""
            if name == "qmp_capabilities" and self.state is State.NEGOTIATION:
                self.state = State.COMMAND
            return Reply(msg["return"], cid)
        if "error" in msg:
            if self._pending:
                self._pending.pop(0)
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            return ErrorReply(str(err.get("class", GENERIC_ERROR)), str(err.get("desc", "")), cid)
        self.state = State.ERROR
        raise RemoteProtocolError(f"server sent an unknown message: {text[:80]!r}")

    # -- output -----------------------------------------------------------------------------

    def send(self, event: Greeting | Command | Reply | ErrorReply | Event) -> bytes:
        """The bytes to write for ``event``; raises ``LocalProtocolError`` if it is out of turn."""
        if self.state in (State.ERROR, State.CLOSED):
            raise LocalProtocolError(f"cannot send in state {self.state.value}")
        if self.role is Role.SERVER:
            self._server_send(event)
        else:
            self._client_send(event)
        return encode(event.to_wire())

    def _server_send(self, event: object) -> None:
        if isinstance(event, Greeting):
            if self.state is not State.GREETING:
                raise LocalProtocolError("the greeting is sent once, first")
            self.state = State.NEGOTIATION
        elif self.state is State.GREETING:
            raise LocalProtocolError("the server must send its greeting first")
        elif isinstance(event, Reply | ErrorReply):
            # An answer to bad input has no pending command; anything else answers the oldest.
            name = self._pending.pop(0) if self._pending else ""
            if name == "qmp_capabilities" and isinstance(event, Reply):
                self.state = State.COMMAND
        elif isinstance(event, Event):
            if self.state is not State.COMMAND:
                raise LocalProtocolError("events are sent only after negotiation")
        else:
            raise LocalProtocolError(f"a server cannot send {type(event).__name__}")

    def _client_send(self, event: object) -> None:
        if not isinstance(event, Command):
            raise LocalProtocolError(f"a client cannot send {type(event).__name__}")
        if self.state is State.GREETING:
            raise LocalProtocolError("wait for the server's greeting before sending")
        if self.state is State.NEGOTIATION and event.name != "qmp_capabilities":
            raise LocalProtocolError("send 'qmp_capabilities' before other commands")
        self._pending.append(event.name)

    @property
    def accepts_events(self) -> bool:
        """True when the server may send events to this client."""
        return self.role is Role.SERVER and self.state is State.COMMAND

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    def send_failed(self) -> None:
        """The transport could not write: nothing more can be said on this connection."""
        self.state = State.ERROR
