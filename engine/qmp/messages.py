"""QMP messages as frozen values, their wire encoding, and the protocol's error vocabulary.

Shared by the framer, the connection state machine, the command table and every client; it
imports nothing from the project.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

# StratoVirt v2.2.0's greeting, byte for byte (docs/qmp.md, "Wire"): libvirt looks for "qemu" 5.0.1.
STRATOVIRT_VERSION: dict[str, Any] = {
    "qemu": {"micro": 1, "minor": 0, "major": 5},
    "package": "",
}
TERMINATOR = b"\r\n"

# Error classes StratoVirt uses (docs/stratovirt.md, "QMP").
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


class Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = Sentinel("NEED_DATA")

QmpEvent = Greeting | Command | Reply | ErrorReply | Event | InvalidInput | ConnectionClosed


def encode(message: dict[str, Any]) -> bytes:
    """One wire message: compact JSON, insertion order kept (the greeting is exact), CRLF."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode() + TERMINATOR
    except UnicodeEncodeError:  # a lone surrogate from somewhere: escape rather than fail
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + TERMINATOR


# -- decoding: what serde_json (StratoVirt's decoder) refuses, refused here too ------------------

_INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # i64 and u64: the widest integers serde decodes


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate field `{key}`")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 21 or not _INT_RANGE[0] <= int(text) <= _INT_RANGE[1]:
        raise ValueError(f"number out of range: {text[:40]}")
    return int(text)


def reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _check_strings(value: Any) -> None:
    """Refuse lone UTF-16 surrogates (``"\\ud800"``): not Unicode text, cannot be echoed."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            try:
                v.encode()
            except UnicodeEncodeError:
                raise ValueError("lone surrogate in a \\u escape") from None
        elif isinstance(v, dict):
            todo += v.keys()
            todo += v.values()
        elif isinstance(v, list):
            todo += v


def strict_loads(text: bytes) -> Any:
    """Decode one JSON text as StratoVirt's serde decoder would accept it: UTF-8, no duplicate
    keys, no NaN/Infinity, no number beyond 64 bits, no lone surrogates. ``ValueError`` says why."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(
            s,
            object_pairs_hook=_no_duplicates,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            parse_constant=reject_constant,
        )
    except RecursionError:
        raise ValueError("nesting too deep") from None
    _check_strings(value)
    return value
