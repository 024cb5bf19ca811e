"""QMP framing: split a byte stream into top-level JSON texts, and resynchronise after bad input.

Real clients send one object per line, so a whole line that parses is taken at once; anything
else (objects spanning reads, several per line, pretty-printed input) goes through an
incremental JSON syntax checker: a tokenizer (regular expressions, so long strings cost C
speed) driving a pushdown automaton. It reports the first byte that cannot continue a JSON
text, as QEMU's lexer and parser do, instead of waiting for a closing brace that may never come.

Resynchronisation (docs/qmp.md): after a syntax error the input is discarded up to the bad
byte; if that byte is a ``{`` that starts a line, a new message starts there, otherwise the rest
of that line is discarded too. A message still unfinished past ``max_message`` bytes, or
nested deeper than ``MAX_DEPTH``, is an error of the same kind. The connection always goes on.

Scan state persists between reads, so a large object arriving in pieces costs O(n), not O(n²).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_DEPTH = 64
TOO_LONG = "The socket message is too long."  # StratoVirt's words

_WS = re.compile(rb"[ \t\r\n]*")


def _ws_end(buf: bytearray, at: int) -> int:
    """Where the whitespace run at ``at`` ends (the pattern matches the empty run too)."""
    m = _WS.match(buf, at)
    return m.end() if m else at


_STRING = re.compile(rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
_STRING_PREFIX = re.compile(
    rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*'
    rb"(?:\\(?:u[0-9a-fA-F]{0,3})?)?\Z"
)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_PREFIX = re.compile(rb"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?\Z")
_LITERALS = (b"true", b"false", b"null")

# What the automaton expects next.
_START, _VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _COMMA_OR_CLOSE = range(7)
_WANTS = {
    _START: "'{'",
    _VALUE: "a value",
    _VALUE_OR_CLOSE: "a value or ']'",
    _KEY: "a string key",
    _KEY_OR_CLOSE: "a string key or '}'",
    _COLON: "':'",
    _COMMA_OR_CLOSE: "',' or a closing bracket",
}


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Input that is not JSON, already discarded; ``desc`` says where and why."""

    desc: str


class Framer:
    """Splits a byte stream into top-level JSON texts, bounded in size and depth.

    ``next()`` returns the bytes of one complete object (or array), a ``BadFrame`` for input that
    cannot be JSON (already skipped), or None when more data is needed.
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.buf = bytearray()
        self._skipping = False  # discarding through the next newline after an error
        self._reset()

    def _reset(self) -> None:
        self._pos = 0  # scan position inside buf (the message starts at 0)
        self._stack = bytearray()  # open brackets
        self._expect = _START

    def feed(self, data: bytes) -> None:
        self.buf += data

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished message are waiting (not just whitespace)."""
        return bool(self._stack) or bool(self.buf.strip())

    def next(self) -> bytes | BadFrame | None:
        buf = self.buf
        if self._skipping:
            nl = buf.find(b"\n")
            if nl < 0:
                buf.clear()
                return None
            del buf[: nl + 1]
            self._skipping = False
        if not self._stack:
            end = _ws_end(buf, 0)
            if end:
                del buf[:end]
            self._pos = 0
            if not buf:
                return None
            # Fast path: a whole line that is valid JSON (what every real client sends).
            # Lines with many brackets take the scanner, which bounds the nesting depth.
            nl = buf.find(b"\n")
            if (
                buf[0] == 0x7B  # {
                and 0 < nl <= self.max_message
                and buf.count(b"{", 0, nl) + buf.count(b"[", 0, nl) <= MAX_DEPTH
            ):
                try:
                    json.loads(buf[:nl])
                except (ValueError, RecursionError):
                    pass
                else:
                    text = bytes(buf[:nl])
                    del buf[: nl + 1]
                    return text
        return self._scan()

    # -- the incremental checker -------------------------------------------------------------

    def _scan(self) -> bytes | BadFrame | None:
        buf, i, n = self.buf, self._pos, len(self.buf)
        stack, expect = self._stack, self._expect
        while True:
            i = _ws_end(buf, i)
            if i >= n:
                break
            c = buf[i]
            if c in b"{[":
                if expect not in (_START, _VALUE, _VALUE_OR_CLOSE):
                    return self._error(i, f"expected {_WANTS[expect]}, found {chr(c)!r}")
                if len(stack) >= MAX_DEPTH:
                    return self._error(i, f"JSON nesting deeper than {MAX_DEPTH} levels")
                stack.append(c)
                expect = _KEY_OR_CLOSE if c == 0x7B else _VALUE_OR_CLOSE
                i += 1
            elif c in b"}]":
                opener = 0x7B if c == 0x7D else 0x5B
                closable = (_KEY_OR_CLOSE, _COMMA_OR_CLOSE) if c == 0x7D else (_VALUE_OR_CLOSE,)
                if not stack or stack[-1] != opener or expect not in (*closable, _COMMA_OR_CLOSE):
                    return self._error(i, f"expected {_WANTS[expect]}, found {chr(c)!r}")
                stack.pop()
                i += 1
                expect = _COMMA_OR_CLOSE
                if not stack:
                    text = bytes(buf[:i])
                    del buf[:i]
                    self._reset()
                    return text
            elif c == 0x2C:  # ,
                if expect != _COMMA_OR_CLOSE:
                    return self._error(i, f"expected {_WANTS[expect]}, found ','")
                expect = _KEY if stack[-1] == 0x7B else _VALUE
                i += 1
            elif c == 0x3A:  # :
                if expect != _COLON:
                    return self._error(i, f"expected {_WANTS[expect]}, found ':'")
                expect = _VALUE
                i += 1
            elif c == 0x22:  # a string: a key or a value
                if expect not in (_KEY, _KEY_OR_CLOSE, _VALUE, _VALUE_OR_CLOSE):
                    return self._error(i, f"expected {_WANTS[expect]}, found a string")
                m = _STRING.match(buf, i)
                if m is None:
                    if _STRING_PREFIX.match(buf, i):
                        break  # the string goes on in the next read
                    return self._error(i, "invalid string (a control character or bad escape)")
                i = m.end()
                expect = _COLON if expect in (_KEY, _KEY_OR_CLOSE) else _COMMA_OR_CLOSE
            elif c in b"-0123456789tfn":  # a number or a literal
                if expect not in (_VALUE, _VALUE_OR_CLOSE):
                    return self._error(i, f"expected {_WANTS[expect]}, found {chr(c)!r}")
                m = _NUMBER.match(buf, i) if c not in b"tfn" else None
                end = m.end() if m else 0
                if c in b"tfn":
                    end = next((i + len(w) for w in _LITERALS if buf.startswith(w, i)), 0)
                if not end or end == n:  # unfinished, or it may go on in the next read
                    rest = bytes(buf[i:])
                    partial = (
                        any(w.startswith(rest) for w in _LITERALS)
                        if c in b"tfn"
                        else _NUMBER_PREFIX.match(rest) is not None
                    )
                    if partial:
                        break
                    return self._error(i, f"invalid value starting with {chr(c)!r}")
                i = end
                expect = _COMMA_OR_CLOSE
            else:
                return self._error(i, f"expected {_WANTS[expect]}, found {_show(c)}")
        self._pos, self._expect = i, expect
        if stack and len(buf) > self.max_message:
            self._skipping = True
            self.buf.clear()
            self._reset()
            return BadFrame(TOO_LONG)
        return None

    def _error(self, i: int, what: str) -> BadFrame:
        """Report the bad byte at ``i`` and resynchronise (see the module docstring)."""
        buf = self.buf
        line = buf.count(b"\n", 0, i) + 1
        col = i - (buf.rfind(b"\n", 0, i) + 1) + 1
        starts_line = not buf[buf.rfind(b"\n", 0, i) + 1 : i].strip()
        restart = buf[i] == 0x7B and starts_line and i > 0
        del buf[:i]
        self._reset()
        self._skipping = not restart
        return BadFrame(f"Invalid JSON: {what} at line {line} column {col}")


def _show(c: int) -> str:
    return repr(chr(c)) if 0x20 <= c < 0x7F else f"byte 0x{c:02x}"
