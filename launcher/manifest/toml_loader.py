"""TOML → plain data, with marks found by a tolerant scan of the text when they are needed.

``tomllib`` keeps no positions, so a small structural scanner (keys, tables, arrays of tables,
inline tables, arrays; values skipped) maps every key path to its line and column. It runs only
when an issue must be placed, so valid manifests pay nothing for it. Syntax errors come from
``tomllib`` itself: the position is parsed out of its message (3.11 has no ``lineno``).
"""

from __future__ import annotations

import re
import sys
import tomllib
from typing import Any

from launcher.errors import Issue, Mark
from launcher.manifest.plain import MAX_DEPTH
from launcher.manifest.sourcemap import Path, SourceMap

_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_END_RE = re.compile(r"\s*\(at end of document\)\s*$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}
_HEX = frozenset("0123456789abcdefABCDEF")


def load_toml(text: str, file: str) -> tuple[Any, SourceMap, list[Issue]]:
    """Parse ``text``; the source map fills itself on first use."""
    smap = SourceMap(file, lazy=lambda: toml_marks(text, file))
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per nested array or inline table
        return None, SourceMap(file), [_too_deep(text, file)]
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        line, col = getattr(exc, "lineno", 0), getattr(exc, "colno", 0)
        m = _POS_RE.search(msg)
        if m:
            line, col, msg = int(m.group(1)), int(m.group(2)), msg[: m.start()]
        elif _END_RE.search(msg):
            lines = text.splitlines() or [""]
            line, col, msg = len(lines), len(lines[-1]) + 1, _END_RE.sub("", msg)
        hint = "fix the TOML syntax at the caret (strings need quotes, tables [name])"
        if "Cannot overwrite" in msg or "Cannot declare" in msg or "defined" in msg:
            hint = "each key and table may appear only once"
        issue = Issue(
            f"TOML syntax error: {msg}", mark=Mark(file, line, col), code="toml-syntax", hint=hint
        )
        return None, SourceMap(file), [issue]
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        return None, SourceMap(file), [_too_long_number(text, file)]
    return data, smap, []


#: strings and comments (run to their end or the end of the text: linear, never backtracking),
#: brackets, and decimal numbers
_TOKENS = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*+(?:"""|\Z)|\'\'\'(?:[^\']|\'(?!\'\'))*+(?:\'\'\'|\Z)'
    r'|"(?:[^"\\\n]|\\.)*+"?|\'[^\'\n]*+\'?|#[^\n]*+|[\[\]{}]|[0-9][0-9_]*+',
    re.S,
)


def _offset_mark(text: str, offset: int, file: str) -> Mark:
    line = text.count("\n", 0, offset) + 1
    return Mark(file, line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def _too_deep(text: str, file: str) -> Issue:
    """Arrays and inline tables nested past ``MAX_DEPTH``, at the first bracket too many."""
    depth, at = 0, 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                at = m.start()
                break
        elif c in "]}":
            depth = max(depth - 1, 0)
    return Issue(
        f"arrays and inline tables are nested more than {MAX_DEPTH} levels deep",
        mark=_offset_mark(text, at, file),
        code="too-deep",
        hint="a manifest needs a few levels: check the brackets",
    )


def _too_long_number(text: str, file: str) -> Issue:
    """A number too long for ``int()``, at the first run of digits that long."""
    digits = sys.get_int_max_str_digits()
    found = next(
        (m for m in _TOKENS.finditer(text) if m.group()[0].isdigit() and len(m.group()) > digits),
        None,
    )
    size = f"{len(found.group())} characters" if found else f"more than {digits} digits"
    return Issue(
        f"the number is {size} long; no manifest value needs more than 20 digits",
        mark=_offset_mark(text, found.start() if found else 0, file),
        code="number-range",
        hint="write a size with a unit (512M, 4G) or check the value",
    )


class _Scanner:
    """Walks TOML text and records the position of every key and value it sees."""

    def __init__(self, text: str, file: str) -> None:
        self.s = text
        self.i = 0
        self.file = file
        self.map = SourceMap(file)
        self.arrays: dict[Path, int] = {}  # array-of-tables path -> last index
        # line starts for offset -> (line, col)
        self.starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def mark(self, offset: int) -> Mark:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return Mark(self.file, lo + 1, offset - self.starts[lo] + 1)

    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def skip_ws(self, newlines: bool = False) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def string(self) -> str:
        """Skip a string at ``self.i`` and return its (roughly unescaped) content."""
        q = self.s[self.i]
        if self.s.startswith(q * 3, self.i):
            end = self.s.find(q * 3, self.i + 3)
            end = len(self.s) if end < 0 else end + 3
            while end < len(self.s) and self.s[end] == q:  # """a"""" edge case
                end += 1
            body = self.s[self.i + 3 : end - 3]
            self.i = end
            return body
        j = self.i + 1
        out: list[str] = []
        while j < len(self.s) and self.s[j] not in (q, "\n"):
            if q == '"' and self.s[j] == "\\" and j + 1 < len(self.s):
                c = self.s[j + 1]
                size = {"u": 4, "U": 8}.get(c, 0)
                digits = self.s[j + 2 : j + 2 + size]
                if size and len(digits) == size and all(d in _HEX for d in digits):
                    code = int(digits, 16)
                    out.append(chr(code) if code <= 0x10FFFF else "?")
                    j += 2 + size
                    continue
                out.append(_ESCAPES.get(c, c))
                j += 2
                continue
            out.append(self.s[j])
            j += 1
        self.i = j + 1
        return "".join(out)

    def key(self) -> list[tuple[str, int]]:
        """A dotted key: [(part, offset)]."""
        parts = []
        while True:
            self.skip_ws()
            start = self.i
            c = self.peek()
            if c in ("'", '"'):
                parts.append((self.string(), start))
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if not m:
                    return parts
                parts.append((m.group(0), start))
                self.i = m.end()
            self.skip_ws()
            if self.peek() != ".":
                return parts
            self.i += 1

    def resolve(self, keys: list[str]) -> Path:
        """A header path with the current index of every array of tables it passes."""
        path: Path = ()
        for k in keys:
            path = (*path, k)
            if path in self.arrays:
                path = (*path, self.arrays[path])
        return path

    def run(self) -> SourceMap:
        current: Path = ()
        while self.i < len(self.s):
            self.skip_ws(newlines=True)
            if self.i >= len(self.s):
                break
            start = self.i
            if self.s.startswith("[[", self.i):
                self.i += 2
                parts = self.key()
                keys = [k for k, _ in parts]
                parent = self.resolve(keys[:-1])
                apath = (*parent, keys[-1]) if keys else parent
                idx = self.arrays.get(apath, -1) + 1
                self.arrays[apath] = idx
                current = (*apath, idx)
                if idx == 0:
                    self.map.keys.setdefault(apath, self.mark(start))
                    self.map.values.setdefault(apath, self.mark(start))
                self.map.values[current] = self.mark(start)
                self.map.keys[current] = self.mark(start)
            elif self.peek() == "[":
                self.i += 1
                parts = self.key()
                current = self.resolve([k for k, _ in parts])
                self.map.keys.setdefault(current, self.mark(start))
                self.map.values.setdefault(current, self.mark(start))
            else:
                if not self.keyval(current):
                    self.i += 1
                    continue
            self.skip_to_eol()
        return self.map

    def skip_to_eol(self) -> None:
        while self.i < len(self.s) and self.s[self.i] != "\n":
            self.i += 1

    def keyval(self, base: Path) -> bool:
        parts = self.key()
        if not parts:
            return False
        self.skip_ws()
        if self.peek() != "=":
            return False
        self.i += 1
        self.skip_ws()
        path = base
        for k, off in parts:
            path = (*path, k)
            self.map.keys.setdefault(path, self.mark(off))
            self.map.values.setdefault(path, self.mark(off))
        self.map.values[path] = self.mark(self.i)
        self.value(path)
        return True

    def value(self, path: Path) -> None:
        c = self.peek()
        if c == "{":
            self.i += 1
            while self.i < len(self.s):
                self.skip_ws()
                if self.peek() in ("}", "\n", ""):
                    self.i += 1
                    return
                if self.peek() == ",":
                    self.i += 1
                    continue
                if not self.keyval(path):
                    self.i += 1
        elif c == "[":
            self.i += 1
            idx = 0
            while self.i < len(self.s):
                self.skip_ws(newlines=True)
                if self.peek() in ("]", ""):
                    self.i += 1
                    return
                if self.peek() == ",":
                    self.i += 1
                    continue
                ipath = (*path, idx)
                self.map.values[ipath] = self.mark(self.i)
                before = self.i
                self.value(ipath)
                if self.i == before:
                    self.i += 1
                idx += 1
        elif c in ("'", '"'):
            self.string()
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.i += 1


def toml_marks(text: str, file: str) -> SourceMap:
    """Best-effort marks for every key path in ``text`` (never raises)."""
    scanner = _Scanner(text, file)
    try:
        return scanner.run()
    except Exception:  # a tolerant helper: a partial map is better than none
        return scanner.map
