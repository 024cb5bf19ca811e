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

Framing: a stream of JSON objects, any whitespace between them; an object may span reads and a
read may hold several. Each object is capped (``max_message``), nesting is capped, and a
buffer that grows past the cap without completing an object is fatal (framing is lost).
Recoverable bad input (invalid JSON, not an object, bad keys) becomes an ``InvalidInput`` event
for the server to answer with an error; the connection goes on.

Output: one compact JSON object per message followed by ``\\r\\n``, as StratoVirt writes it.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

# StratoVirt v2.2.0's greeting, byte for byte (spec §7.2): libvirt looks for "qemu" 5.0.1.
STRATOVIRT_VERSION: dict[str, Any] = {
    "qemu": {"micro": 1, "minor": 0, "major": 5},
    "package": "",
}
SERVER_MAX_MESSAGE = 8192  # StratoVirt: "The socket message is too long."
CLIENT_MAX_MESSAGE = 16 << 20  # replies such as QEMU's query-qmp-schema are large
MAX_DEPTH = 64
TERMINATOR = b"\r\n"

# Error classes StratoVirt uses (spec §7.3).
GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"
OPERATION_THROTTLED = "OperationThrottled"
ERROR_CLASSES = frozenset(
    {
        GENERIC_ERROR,
        COMMAND_NOT_FOUND,
        DEVICE_NOT_ACTIVE,
        DEVICE_NOT_FOUND,
        KVM_MISSING_CAP,
        OPERATION_THROTTLED,
    }
)


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    GREETING = "greeting"
    NEGOTIATION = "negotiation"
    COMMAND = "command"
    CLOSED = "closed"
    ERROR = "error"


# -- errors: whose fault ------------------------------------------------------------------------


class QmpProtocolError(Exception):
    """The protocol was broken; the connection is in state ERROR afterwards."""


class LocalProtocolError(QmpProtocolError):
    """We (the caller of ``send``) misused the protocol: a bug on this side."""


class RemoteProtocolError(QmpProtocolError):
    """The peer broke the protocol beyond recovery. ``reply`` is a last error worth sending."""

    def __init__(self, message: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(message)
        self.error_class = error_class


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Greeting:
    version: dict[str, Any] = field(default_factory=lambda: dict(STRATOVIRT_VERSION))
    capabilities: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"QMP": {"version": self.version, "capabilities": list(self.capabilities)}}


@dataclass(frozen=True)
class Command:
    """``{"execute": name, "arguments": {...}, "id": ...}``; ``id`` is None when absent."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: Any = None

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": self.name}
        if self.arguments:
            msg["arguments"] = self.arguments
        if self.id is not None:
            msg["id"] = self.id
        return msg


@dataclass(frozen=True)
class Reply:
    """A successful reply: ``{"return": value}`` echoing the command's id."""

    value: Any = field(default_factory=dict)
    id: Any = None

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"return": self.value}
        if self.id is not None:
            msg["id"] = self.id
        return msg


@dataclass(frozen=True)
class ErrorReply:
    """A failed command: ``{"error": {"class": ..., "desc": ...}}`` echoing the id."""

    error_class: str
    desc: str
    id: Any = None

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"error": {"class": self.error_class, "desc": self.desc}}
        if self.id is not None:
            msg["id"] = self.id
        return msg


@dataclass(frozen=True)
class Event:
    """An asynchronous event; ``seconds``/``microseconds`` are the wall-clock timestamp."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: int = 0
    microseconds: int = 0

    @classmethod
    def now(cls, name: str, data: dict[str, Any] | None = None, clock: Any = time.time) -> Event:
        t = clock()
        sec = int(t)
        return cls(name, dict(data or {}), sec, int((t - sec) * 1_000_000))

    @property
    def timestamp(self) -> float:
        return self.seconds + self.microseconds / 1e6

    def to_wire(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "data": self.data,
            "timestamp": {"seconds": self.seconds, "microseconds": self.microseconds},
        }


@dataclass(frozen=True)
class InvalidInput:
    """Input the server must answer with an error (bad JSON, bad keys...), then carry on."""

    error_class: str
    desc: str
    id: Any = None

    def reply(self) -> ErrorReply:
        return ErrorReply(self.error_class, self.desc, self.id)


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its end (``receive_data(b"")``)."""


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")

QmpEvent = Greeting | Command | Reply | ErrorReply | Event | InvalidInput | ConnectionClosed


def encode(message: dict[str, Any]) -> bytes:
    """One wire message: compact JSON, insertion order kept (the greeting is exact), CRLF."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + TERMINATOR


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


# -- framing ------------------------------------------------------------------------------------


class _Framer:
    """Splits a byte stream into top-level JSON texts, bounded in size and depth.

    Returns ``(bytes, too_deep)`` per complete object, ``(bytes, False)`` for a run of stray
    bytes at top level (reported as invalid), or None when more data is needed. Scan state
    persists between calls, so a large object arriving in pieces costs O(n), not O(n²).
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.buf = bytearray()
        self._pos = 0  # scan position inside buf
        self._depth = 0
        self._max_seen = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[bytes, bool] | None:
        buf = self.buf
        if self._depth == 0 and not self._in_string:
            # Skip whitespace between messages.
            i = 0
            while i < len(buf) and buf[i] in b" \t\r\n":
                i += 1
            if i:
                del buf[:i]
            self._pos = 0
            if not buf:
                return None
            first = buf[0]
            if first not in b"{[":
                j = 0
                while j < len(buf) and buf[j] not in b" \t\r\n{[":
                    j += 1
                if j == len(buf) and j <= self.max_message:
                    return None  # the stray token may go on
                junk = bytes(buf[:j])
                del buf[:j]
                return junk, False
            # Fast path: a whole line that is valid JSON (what every real client sends).
            # Lines with many brackets take the scanner, which measures nesting depth.
            nl = buf.find(b"\n")
            if 0 < nl <= self.max_message and (
                buf.count(b"{", 0, nl) + buf.count(b"[", 0, nl) <= MAX_DEPTH
            ):
                try:
                    json.loads(buf[:nl])
                except (ValueError, RecursionError):
                    pass
                else:
                    text = bytes(buf[:nl])
                    del buf[: nl + 1]
                    return text, False
        return self._scan()

    def _scan(self) -> tuple[bytes, bool] | None:
        buf = self.buf
        i = self._pos
        n = len(buf)
        depth, in_string, escape = self._depth, self._in_string, self._escape
        max_seen = self._max_seen
        while i < n:
            c = buf[i]
            i += 1
            if in_string:
                if escape:
                    escape = False
                elif c == 0x5C:  # backslash
                    escape = True
                elif c == 0x22:  # quote
                    in_string = False
            elif c == 0x22:
                in_string = True
            elif c in (0x7B, 0x5B):  # { [
                depth += 1
                max_seen = max(max_seen, depth)
            elif c in (0x7D, 0x5D):  # } ]
                depth -= 1
                if depth == 0:
                    text = bytes(buf[:i])
                    del buf[:i]
                    self._pos, self._depth, self._in_string, self._escape = 0, 0, False, False
                    self._max_seen = 0
                    return text, max_seen > MAX_DEPTH
        self._pos, self._depth, self._in_string, self._escape = i, depth, in_string, escape
        self._max_seen = max_seen
        if len(buf) > self.max_message:
            raise RemoteProtocolError("The socket message is too long.")
        return None


# -- the connection -----------------------------------------------------------------------------


class QmpConnection:
    """One end of one QMP connection. Not thread-safe: one owner drives it."""

    def __init__(self, role: Role, *, strict: bool = False, max_message: int | None = None) -> None:
        self.role = role
        self.strict = strict
        self.state = State.GREETING
        limit = max_message or (SERVER_MAX_MESSAGE if role is Role.SERVER else CLIENT_MAX_MESSAGE)
        self._framer = _Framer(limit)
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

    def next_event(self) -> QmpEvent | _Sentinel:
        """The next complete event, ``NEED_DATA``, or ``ConnectionClosed`` at end of stream."""
        if self.state is State.ERROR:
            raise LocalProtocolError("next_event after a protocol error")
        try:
            item = self._framer.next()
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
        if item is None:
            if self._eof:
                if self._framer.buf.strip() and self.role is Role.CLIENT:
                    self.state = State.ERROR
                    raise RemoteProtocolError("connection closed in the middle of a message")
                self.state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        text, too_deep = item
        if self.role is Role.SERVER:
            return self._server_message(text, too_deep)
        return self._client_message(text, too_deep)

    def _decode(self, text: bytes) -> Any:
        return json.loads(text.decode("utf-8"), parse_constant=_reject_constant)

    def _server_message(self, text: bytes, too_deep: bool) -> QmpEvent:
        if too_deep:
            return InvalidInput(GENERIC_ERROR, f"JSON nesting deeper than {MAX_DEPTH} levels")
        if len(text) > self._framer.max_message:
            return InvalidInput(GENERIC_ERROR, "The socket message is too long.")
        try:
            msg = self._decode(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
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

    def _client_message(self, text: bytes, too_deep: bool) -> QmpEvent:
        try:
            if too_deep:
                raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
            msg = self._decode(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
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
