"""Parsers for the manifest's value syntaxes: sizes, cpu lists, PCI addresses, MAC addresses.

Pure functions that raise ``ValueError`` with a sentence fit for an ``Issue`` message; the
builder attaches the key path and mark. Kept apart so ``svlaunch import`` and the compilers can
reuse exactly the same grammar (one definition of what ``"1536MiB"`` or ``"0-1,4"`` means).
"""

from __future__ import annotations

import re

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
_SIZE_RE = re.compile(r"^\s*([0-9]{1,20})\s*(?:([KMGTkmgt])(?:i?B)?|B)?\s*$")
_DECIMAL = re.compile(r"[0-9]{1,20}")  # ASCII digits, at most 64 bits' worth
MAX_RANGE = 1 << 16  # values one A-B range may expand to (cpus and nodes are far fewer)

SIZE_HINT = 'write an integer number of bytes or a string like "512M", "1G", "1536MiB"'


def parse_size(value: object) -> int:
    """Bytes from an int (bytes) or a string with an optional K/M/G/T (or KiB...) suffix.

    A bare number in a string means bytes too: the manifest has one rule, unlike ``-m``'s
    "plain number is MiB" which surprises everybody.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size, got {value!r}")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"invalid size {value!r}")
    number, unit = int(m.group(1)), (m.group(2) or "").upper()
    return number * _UNITS[unit]


def format_size(size: int) -> str | int:
    """The shortest exact spelling: ``"1G"``, ``"512M"``, ``"4K"``, else the integer."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return size


def parse_int_list(value: object, what: str = "cpu list") -> tuple[int, ...]:
    """A list of ints, or a string ``"0-1,4"`` (StratoVirt's ``:`` separator accepted too).

    Ranges ``A-B`` need ``A < B`` like StratoVirt's integer lists; order is kept and duplicates
    are kept too (the NUMA rules report them with their own message).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a {what}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} entries must not be negative, got {value}")
        return (value,)
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise ValueError(f"{what} entries must be non-negative integers, got {item!r}")
            out.append(item)
        return tuple(out)
    if not isinstance(value, str):
        raise ValueError(f"expected a {what}, got {value!r}")
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError(f"empty {what}")
    out = []
    for part in re.split(r"[,:]", text):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not _DECIMAL.fullmatch(lo) or (sep and not _DECIMAL.fullmatch(hi)):
            raise ValueError(f"invalid {what} item {part!r} in {value!r}")
        if not sep:
            out.append(int(lo))
            continue
        a, b = int(lo), int(hi)
        if a >= b:
            raise ValueError(f"range {part!r} in {value!r} must go from low to high (A < B)")
        if b - a >= MAX_RANGE:
            raise ValueError(f"range {part!r} in {value!r} spans more than {MAX_RANGE} values")
        out.extend(range(a, b + 1))
    return tuple(out)


def format_int_list(values: tuple[int, ...]) -> str | list[int]:
    """``"0-3,6"`` when the list is sorted and unique (round-trips), else the plain list."""
    if list(values) != sorted(set(values)) or not values:
        return list(values)
    parts: list[str] = []
    start = prev = values[0]
    for v in (*values[1:], None):
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


def _hexdec(text: str) -> int:
    text = text.strip()
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def parse_pci_addr(value: object) -> tuple[int, int]:
    """``(slot, function)`` from ``"0x3"``, ``"3"``, ``"0x3.0x1"``, ``"0x1e.7"`` or an int slot.

    Digits without ``0x`` are decimal, as in StratoVirt (``"10"`` is slot 0xa).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        slot, func = value, 0
    elif isinstance(value, str):
        parts = value.split(".")
        if len(parts) > 2:
            raise ValueError(f"invalid PCI addr {value!r}: use SLOT or SLOT.FUNCTION")
        try:
            slot = _hexdec(parts[0])
            func = _hexdec(parts[1]) if len(parts) == 2 else 0
        except ValueError:
            raise ValueError(
                f"invalid PCI addr {value!r}: use SLOT or SLOT.FUNCTION (hex with 0x)"
            ) from None
    else:
        raise ValueError(f'expected a PCI addr like "0x3" or "0x3.0x1", got {value!r}')
    if not 0 <= slot <= 31:
        raise ValueError(f"PCI slot {slot:#x} in addr {value!r} is out of range 0x0-0x1f")
    if not 0 <= func <= 7:
        raise ValueError(f"PCI function {func} in addr {value!r} is out of range 0-7")
    return slot, func
