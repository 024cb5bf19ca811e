"""StratoVirt v2.2 ``key=value,...`` property lists and value types, read and written.

Reading mirrors ``CmdParser`` (strict: unknown and repeated keys fail) and the lenient pre-scan the
dispatchers (``-device``, ``-object``, ``-drive if=``) use; each value type has a reader that
accepts exactly StratoVirt's spellings and a writer producing the canonical one, so emission and
import share one definition. Failures are ``InvalidInput`` located at the argv element and the
character where the offending item starts (see the package docstring for the mark scheme).
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from launcher.errors import InvalidInput, Issue, Mark

MIB, GIB = 1 << 20, 1 << 30
MAX_RANGE = 1 << 16  # values one A-B range may expand to (cpus and nodes are far fewer)
BOOL_TRUE = ("on", "true", "yes")
BOOL_FALSE = ("off", "false", "no")

T = TypeVar("T")


def argv_issue(
    message: str, index: int, col: int = 0, hint: str = "", text: str = "", path: str = ""
) -> Issue:
    """An issue at argv element ``index`` (1-based) with a caret under column ``col``."""
    if text:
        caret = " " * (max(col, 1) - 1) + "^"
        message = f"{message}\n    {text}\n    {caret}"
    return Issue(message, path=path, hint=hint, mark=Mark("argv", index, col), code="argv")


def fail(message: str, index: int, col: int = 0, hint: str = "", text: str = "") -> InvalidInput:
    return InvalidInput([argv_issue(message, index, col, hint, text)])


def suggest(word: str, choices: Collection[str]) -> str:

    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


# -- value types: read ------------------------------------------------------------------------


def read_bool(text: str) -> bool:
    """ExBool: exactly on/true/yes or off/false/no (lowercase)."""
    if text in BOOL_TRUE:
        return True
    if text in BOOL_FALSE:
        return False
    raise ValueError(f"'{text}' is not a bool: write on/off (true/false, yes/no also work)")


def read_uint(text: str, bits: int = 64) -> int:
    """Decimal digits with an optional leading '+', within uN (Rust ``str::parse``)."""
    digits = text[1:] if text.startswith("+") else text
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"'{text}' is not an unsigned decimal integer")
    if len(digits.lstrip("0")) > 20:  # (and int() refuses 4,300 digits)
        raise ValueError(f"'{text}' does not fit in u{bits} (max {(1 << bits) - 1})")
    value = int(digits)
    if value >= 1 << bits:
        raise ValueError(f"'{text}' does not fit in u{bits} (max {(1 << bits) - 1})")
    return value


def read_int(text: str, bits: int = 32) -> int:
    """Signed decimal (i32): optional sign, digits."""
    sign = -1 if text.startswith("-") else 1
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"'{text}' is not a decimal integer")
    if len(digits.lstrip("0")) > 20:
        raise ValueError(f"'{text}' does not fit in i{bits}")
    value = sign * int(digits)
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"'{text}' does not fit in i{bits}")
    return value


def read_hexdec(text: str) -> int:
    """``0x``/``0X`` prefix → hex, otherwise decimal; surrounding whitespace trimmed."""
    t = text.strip()
    try:
        if t[:2] in ("0x", "0X"):
            if not t[2:] or not all(c in "0123456789abcdefABCDEF" for c in t[2:]):
                raise ValueError
            return int(t[2:], 16)
        return read_uint(t)
    except ValueError:
        raise ValueError(f"'{text}' is not a number (0x-prefixed hex or decimal)") from None


def read_size(text: str) -> int:
    """``-m`` sizes: digits with one optional M/m/G/g suffix; a plain number means MiB."""
    body, unit = text, MIB
    if text[-1:] in ("M", "m", "G", "g"):
        body, unit = text[:-1], GIB if text[-1] in "Gg" else MIB
    if not body.isascii() or not body.isdigit():
        raise ValueError(
            f"'{text}' is not a StratoVirt size: digits with an optional M or G suffix "
            "(a plain number is MiB; K, T, fractions and 'MiB' are not accepted)"
        )
    value = int(body) * unit if len(body.lstrip("0")) <= 20 else 1 << 64
    if value >= 1 << 64:
        raise ValueError(f"Integer overflow occurred during parse of '{text}'")
    return value


def read_intlist(text: str) -> tuple[int, ...]:
    """``[0-1:4-5]``: ':'-separated numbers and ranges A-B with A < B, order kept."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    out: list[int] = []
    for item in t.split(":"):
        lo, sep, hi = item.partition("-")
        try:
            a = read_uint(lo)
            b = read_uint(hi) if sep else a
        except ValueError:
            raise ValueError(f"'{item}' in '{text}' is not N or A-B") from None
        if sep and a >= b:
            raise ValueError(f"range '{item}' in '{text}' needs A < B")
        if b - a >= MAX_RANGE:
            raise ValueError(f"range '{item}' in '{text}' spans more than {MAX_RANGE} values")
        out.extend(range(a, b + 1))
    return tuple(out)


def read_pci_addr(text: str) -> tuple[int, int]:
    """``SLOT`` or ``SLOT.FUNC``, each hexdec (a bare number is decimal); slot ≤ 31, func ≤ 7."""
    parts = text.split(".")
    if len(parts) > 2 or any(not p.strip() for p in parts):
        raise ValueError(
            f"'{text}' is not a PCI address: write SLOT or SLOT.FUNC, e.g. 0x3 or 0x3.0x1"
        )
    slot = read_hexdec(parts[0])
    func = read_hexdec(parts[1]) if len(parts) == 2 else 0
    if slot > 31:
        raise ValueError(f"slot {slot:#x} in '{text}' is out of range (0..0x1f)")
    if func > 7:
        raise ValueError(f"function {func} in '{text}' is out of range (0..7)")
    return slot, func


# -- value types: write -----------------------------------------------------------------------


def write_bool(value: bool) -> str:
    return "on" if value else "off"


def write_size(size: int) -> str:
    """``NG`` for whole GiB, ``NM`` for whole MiB; anything else has no StratoVirt spelling."""
    if size > 0 and size % GIB == 0:
        return f"{size // GIB}G"
    if size > 0 and size % MIB == 0:
        return f"{size // MIB}M"
    raise ValueError(f"{size} bytes is not a whole number of MiB, which StratoVirt cannot express")


def write_intlist(values: tuple[int, ...]) -> str:
    """Runs of consecutive ascending numbers as ``A-B``, joined with ':' (order kept)."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ":".join(parts)


# -- property lists ---------------------------------------------------------------------------


@dataclass
class Props:
    """One parsed property list, remembering where each key sits for error marks."""

    text: str
    index: int
    what: str  # "-drive", "virtio-blk-pci", ...
    positional: str | None = None
    items: dict[str, str | None] = field(default_factory=dict)  # None: bare flag
    cols: dict[str, int] = field(default_factory=dict)  # 1-based column of each item

    def error(self, message: str, key: str = "", hint: str = "") -> InvalidInput:
        return fail(message, self.index, self.cols.get(key, 1), hint, self.text)

    def has(self, key: str) -> bool:
        return key in self.items

    def raw(self, key: str) -> str | None:
        """The value text, or None if absent; a bare flag for a valued key is an error."""
        if key not in self.items:
            return None
        value = self.items[key]
        if value is None:
            raise self.error(f"'{key}' in {self.what} needs a value ({key}=...)", key)
        return value

    def require(self, key: str, hint: str = "") -> str:
        value = self.raw(key)
        if value is None:
            raise fail(
                f"'{key}' is missing for '{self.what}'",
                self.index,
                0,
                hint or f"add {key}=... to {self.what}",
                self.text,
            )
        return value

    def typed(self, key: str, reader: Callable[..., T], *args: Any) -> T | None:
        """The value read by ``reader``, or None if absent."""
        text = self.raw(key)
        return None if text is None else self._read(key, text, reader, *args)

    def need(self, key: str, reader: Callable[..., T], *args: Any, hint: str = "") -> T:
        """The value of a key the option needs: absent is ``require``'s error."""
        return self._read(key, self.require(key, hint), reader, *args)

    def _read(self, key: str, text: str, reader: Callable[..., T], *args: Any) -> T:
        try:
            return reader(text, *args)
        except ValueError as exc:
            raise self.error(f"invalid value for '{key}' in {self.what}: {exc}", key) from None

    def bool(self, key: str) -> bool | None:
        return self.typed(key, read_bool)

    def uint(self, key: str, bits: int = 64, lo: int = 0, hi: int | None = None) -> int | None:
        value = self.typed(key, read_uint, bits)
        if value is not None and (value < lo or (hi is not None and value > hi)):
            top = "" if hi is None else f" and <= {hi}"
            raise self.error(
                f"The value of '{key}' in {self.what} should be >= {lo}{top}, got {value}", key
            )
        return value

    def flag(self, key: str) -> builtins.bool:
        """A bare flag (``server``); any value is an error, as in StratoVirt's chardev parser."""
        if key not in self.items:
            return False
        if self.items[key] is not None:
            raise self.error(f"No parameter needed for {key}", key, f"write a bare '{key}'")
        return True


def parse_props(
    text: str, index: int, what: str, keys: Collection[str], positional: bool = True
) -> Props:
    """Strict parse: every comma splits, first bare item is the positional, keys must be known."""
    p = Props(text, index, what)
    if text.startswith(",") or text.endswith(","):
        raise fail(
            f"property list of {what} must not start or end with a comma",
            index,
            1 if text.startswith(",") else len(text),
            text=text,
        )
    col = 1
    for n, item in enumerate(text.split(",")):
        if not item:
            raise fail(f"empty item in the property list of {what}", index, col, text=text)
        if "=" in item:
            if item.startswith("=") or item.endswith("="):
                raise fail(
                    f"Invalid parameter '{item}' for '{what}': empty key or value",
                    index,
                    col,
                    f"write key=value with a non-empty value ({', '.join(sorted(keys))})",
                    text,
                )
            key, _, value = item.partition("=")
        elif n == 0 and positional:
            key, value = "", item
        else:
            key, value = item, None
        if key and key not in keys:
            raise fail(
                f"Invalid parameter '{key}' for '{what}'",
                index,
                col,
                suggest(key, keys) + f"valid keys: {', '.join(sorted(keys)) or '(none)'}",
                text,
            )
        if key in p.items or (not key and p.positional is not None):
            raise fail(
                f"Input field '{key or item}' in {what} is offered more than once",
                index,
                col,
                text=text,
            )
        if key:
            p.items[key] = value
        else:
            p.positional = value
        p.cols[key] = col
        col += len(item) + 1
    return p


def lenient_first(text: str) -> str | None:
    """The dispatchers' type word: the first item when it has no '=' (else StratoVirt drops it)."""
    first = text.split(",", 1)[0]
    return first if first and "=" not in first else None


def lenient_get(text: str, key: str) -> str | None:
    """A key read by the lenient scan (``-drive if=``), ignoring everything else."""
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if sep and k == key:
            return v
    return None
