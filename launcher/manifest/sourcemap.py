"""Key paths and where they are in the file: ``SourceMap[path] -> Mark``.

A path is a tuple of keys and list indices (``("drives", "rootfs", "queue-size")``); its text
form, used in ``Issue.path``, is ``drives.rootfs.queue-size`` (``numa.nodes[1].cpus``; keys that
contain dots or spaces are quoted: ``root-ports."pcie.1".addr``). YAML fills the map while
loading; TOML fills it lazily, only when an issue needs a place (``toml_marks``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from launcher.errors import Issue, Mark

Path = tuple[str | int, ...]
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r'\[(\d+)\]|"((?:[^"\\]|\\.)*)"|([^.\[\]"]+)')


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
            continue
        text = key if _BARE.match(key) else '"' + key.replace('"', '\\"') + '"'
        out += ("." if out else "") + text
    return out


def parse_path(text: str) -> Path:
    """The inverse of ``format_path`` (lenient: unknown characters end the path)."""
    out: list[str | int] = []
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            out.append(int(m.group(1)))
        elif m.group(2) is not None:
            out.append(m.group(2).replace('\\"', '"'))
        else:
            out.append(m.group(3))
    return tuple(out)


class SourceMap:
    """Marks of keys and values by path; ``values[()]`` is the document itself.

    A plain class (no generated dataclass methods to pay for at start-up).
    """

    __slots__ = ("file", "keys", "lazy", "values")

    def __init__(
        self,
        file: str,
        keys: dict[Path, Mark] | None = None,
        values: dict[Path, Mark] | None = None,
        lazy: Callable[[], SourceMap] | None = None,  # fills the maps on first use (TOML)
    ) -> None:
        self.file = file
        self.keys: dict[Path, Mark] = {} if keys is None else keys
        self.values: dict[Path, Mark] = {} if values is None else values
        self.lazy = lazy

    def __repr__(self) -> str:
        return f"SourceMap({self.file!r}, {len(self.keys)} keys, {len(self.values)} values)"

    def _ensure(self) -> None:
        if self.lazy is not None:
            filled, self.lazy = self.lazy(), None
            self.keys, self.values = filled.keys, filled.values

    def mark(self, path: Path, at: str = "value") -> Mark:
        """Where ``path`` is: its value (or its key with ``at="key"``); for a path that is not
        written, its first written child, else its nearest written ancestor's key, else the
        first key of the document."""
        self._ensure()
        probe = tuple(path)
        first, second = (self.keys, self.values) if at == "key" else (self.values, self.keys)
        for table in (first, second):
            if probe in table:
                return table[probe]
        n = len(probe)
        below = [
            mk for t in (first, second) for p, mk in t.items() if len(p) > n and p[:n] == probe
        ]
        if below:  # e.g. "numa" when only "numa.nodes" is written
            return min(below)
        while probe:
            probe = probe[:-1]
            for table in (self.keys, self.values):
                if probe in table:
                    return table[probe]
        every = [*self.keys.values(), *self.values.values()]
        return min(every) if every else Mark(self.file, 1, 1)

    def locate(self, issues: Iterable[Issue]) -> list[Issue]:
        """Issues without a mark placed at their path (unknown keys point at the key)."""
        out = []
        for issue in issues:
            if issue.mark is None:
                at = "key" if issue.code in _KEY_CODES else "value"
                issue = issue.located(self.mark(parse_path(issue.path), at))
            out.append(issue)
        return out


_KEY_CODES = {"unknown-key", "duplicate-key", "vm-name-duplicate", "ozone-cgroup-key"}
