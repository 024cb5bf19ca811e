"""YAML → plain data plus a ``SourceMap``, rejecting duplicate keys.

PyYAML's composer gives every node a start mark; we build the plain data ourselves from the
node tree so each key and value gets its mark and a duplicate key is an issue, not a silent
overwrite. libyaml (``CSafeLoader``) is used when present: it is several times faster.
"""

from __future__ import annotations

from typing import Any

import yaml

from launcher.errors import Issue, Mark
from launcher.manifest.plain import MAX_DEPTH
from launcher.manifest.sourcemap import Path, SourceMap, format_path

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader

MAX_NODES = 200_000  # aliases can make a small file expand enormously ("billion laughs")


class _Limit(Exception):
    """The document is too deep or expands too much: ``issue`` says which, where."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(issue.message)
        self.issue = issue


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _syntax(message: str, where: Mark, hint: str = "fix the YAML syntax at the caret") -> Issue:
    return Issue(f"YAML syntax error: {message}", mark=where, code="yaml-syntax", hint=hint)


def _bad_scalar(n: yaml.Node, exc: Exception, file: str) -> Issue:
    """A scalar PyYAML recognises (by its form or tag) but cannot build, in the user's terms."""
    text = str(n.value)
    if "integer string conversion" in str(exc):  # more digits than int() converts
        return Issue(
            f"the number is {len(text)} characters long; no manifest value needs more than 20"
            " digits",
            mark=_mark(file, n),
            code="number-range",
            hint="write a size with a unit (512M, 4G) or check the value",
        )
    kind = n.tag.rsplit(":", 1)[-1]  # tag:yaml.org,2002:timestamp -> timestamp
    return Issue(
        f"{text[:40]!r} reads as a YAML {kind} but is not a valid one",
        mark=_mark(file, n),
        code="yaml-syntax",
        hint="quote it to make it a string",
    )


def _reader_error(exc: yaml.YAMLError, text: str, file: str) -> Issue:
    """A character YAML does not allow, at its first occurrence."""
    code = getattr(exc, "character", None)
    at = text.find(chr(code)) if isinstance(code, int) else -1
    if at < 0:
        return _syntax(str(getattr(exc, "reason", None) or "invalid YAML"), Mark(file, 1, 1))
    line = text.count("\n", 0, at) + 1
    where = Mark(file, line, at - (text.rfind("\n", 0, at) + 1) + 1)
    return _syntax(
        f"the character U+{code:04X} is not allowed in YAML",
        where,
        "remove it: a manifest holds no control characters",
    )


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap, list[Issue]]:
    """Parse ``text``; on a syntax error return ``(None, map, [issue])``."""
    smap = SourceMap(file)
    issues: list[Issue] = []
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
            problem = exc.problem or "invalid YAML"
            if exc.context:
                problem = f"{exc.context}: {problem}"
            return None, smap, [_syntax(problem, where)]
        except yaml.YAMLError as exc:  # the reader: a character YAML does not allow
            return None, smap, [_reader_error(exc, text, file)]
        except RecursionError:  # the pure-Python composer, without libyaml's depth limit
            return None, smap, [_syntax(f"nested more than {MAX_DEPTH} levels", Mark(file, 1, 1))]
        if node is None:
            return {}, smap, issues
        count = [0]

        def build(n: yaml.Node, path: Path, depth: int) -> Any:
            count[0] += 1
            if depth > MAX_DEPTH:
                raise _Limit(
                    Issue(
                        f"the manifest is nested more than {MAX_DEPTH} levels deep",
                        format_path(path),
                        "a manifest needs a few levels: check the indentation and brackets",
                        _mark(file, n),
                        code="too-deep",
                    )
                )
            if count[0] > MAX_NODES:  # at the top-level key whose value expands (an alias's
                top = path[:1]  # node is shared, so its own mark is where it was defined)
                raise _Limit(
                    Issue(
                        f"aliases expand this value to more than {MAX_NODES} values",
                        format_path(top),
                        "write the values out instead of nesting aliases",
                        smap.keys.get(top, Mark(file, 1, 1)),
                        code="yaml-syntax",
                    )
                )
            smap.values[path] = _mark(file, n)
            if isinstance(n, yaml.MappingNode):
                out: dict[str, Any] = {}
                loader.flatten_mapping(n)  # merge keys (<<) as PyYAML does
                for knode, vnode in n.value:
                    key = scalar(knode)
                    if not isinstance(key, str):
                        issues.append(
                            Issue(
                                f"keys must be strings, got {key!r}",
                                format_path(path),
                                "quote the key",
                                _mark(file, knode),
                                code="key-type",
                            )
                        )
                        key = str(key)
                    kpath = (*path, key)
                    if key in out:
                        issues.append(
                            Issue(
                                f"duplicate key {key!r} (first at line {smap.keys[kpath].line})",
                                format_path(kpath),
                                "remove one of the two entries",
                                _mark(file, knode),
                                code="duplicate-key",
                            )
                        )
                        continue
                    smap.keys[kpath] = _mark(file, knode)
                    out[key] = build(vnode, kpath, depth + 1)
                return out
            if isinstance(n, yaml.SequenceNode):
                return [build(v, (*path, i), depth + 1) for i, v in enumerate(n.value)]
            return scalar(n)

        def scalar(n: yaml.Node) -> Any:
            if not isinstance(n, yaml.ScalarNode):  # a table or list used as a key
                raise _Limit(
                    Issue(
                        "a key must be a plain word, not a table or a list",
                        mark=_mark(file, n),
                        code="key-type",
                        hint="write the key as text",
                    )
                )
            try:
                return loader.construct_object(n, deep=True)
            except yaml.YAMLError:
                raise
            except Exception as exc:  # PyYAML's own constructor on one scalar: a timestamp
                raise _Limit(_bad_scalar(n, exc, file)) from None  # 2024-13-45, `!!int ""`

        try:
            data = build(node, (), 0)
        except _Limit as limit:
            return None, smap, [*issues, limit.issue]
        except yaml.MarkedYAMLError as exc:  # a tag no safe loader builds (!!python/...)
            mark = exc.problem_mark or exc.context_mark
            where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
            issue = Issue(
                f"YAML error: {exc.problem or 'invalid value'}",
                mark=where,
                code="yaml-syntax",
                hint="remove the tag (a manifest holds plain tables, lists, text and numbers)",
            )
            return None, smap, [*issues, issue]
        return data, smap, issues
    finally:
        loader.dispose()
