"""QMP framing: split a byte stream into top-level JSON texts, bounded in size and depth.

Real clients send one object per line, so a whole line that parses is taken at once; anything
else (objects spanning reads, several per line, pretty-printed input) goes through a scanner
that tracks strings, escapes and nesting. Scan state persists between reads, so a large object
arriving in pieces costs O(n), not O(n²).
"""

from __future__ import annotations

import json

from engine.qmp.messages import RemoteProtocolError

MAX_DEPTH = 64


class Framer:
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
