"""YAML → plain data plus a ``SourceMap``, rejecting duplicate keys.

PyYAML's composer gives every node a start mark; we build the plain data ourselves from the
node tree so each key and value gets its mark and a duplicate key is an issue, not a silent
overwrite. libyaml (``CSafeLoader``) is used when present: it is several times faster.
"""

from __future__ import annotations

from typing import Any

import yaml

from launcher.errors import Issue, Mark
from launcher.manifest.sourcemap import Path, SourceMap, format_path

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader

MAX_DEPTH = 64
MAX_NODES = 200_000  # aliases can make a small file expand enormously ("billion laughs")


class _Limit(Exception):
    pass


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


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
            where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file)
            problem = exc.problem or "invalid YAML"
            if exc.context:
                problem = f"{exc.context}: {problem}"
            issues.append(
                Issue(
                    f"YAML syntax error: {problem}",
                    mark=where,
                    code="yaml-syntax",
                    hint="fix the YAML syntax at the caret",
                )
            )
            return None, smap, issues
        except yaml.YAMLError as exc:
            issues.append(Issue(f"YAML error: {exc}", mark=Mark(file, 1, 1), code="yaml-syntax"))
            return None, smap, issues
        if node is None:
            return {}, smap, issues
        count = [0]

        def build(n: yaml.Node, path: Path, depth: int) -> Any:
            count[0] += 1
            if depth > MAX_DEPTH or count[0] > MAX_NODES:
                raise _Limit
            smap.values[path] = _mark(file, n)
            if isinstance(n, yaml.MappingNode):
                out: dict[str, Any] = {}
                loader.flatten_mapping(n)  # merge keys (<<) as PyYAML does
                for knode, vnode in n.value:
                    key = loader.construct_object(knode, deep=True)
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
            return loader.construct_object(n, deep=True)

        try:
            data = build(node, (), 0)
        except _Limit:
            issues.append(
                Issue(
                    "YAML document is too deeply nested or expands too much (aliases)",
                    mark=smap.mark(()),
                    hint="write the values out instead of nesting aliases",
                    code="yaml-syntax",
                )
            )
            return None, smap, issues
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
            issues.append(
                Issue(f"YAML error: {getattr(exc, 'problem', exc)}", mark=where, code="yaml-syntax")
            )
            return None, smap, issues
        except (ValueError, OverflowError) as exc:  # e.g. a timestamp like 2024-13-45
            issues.append(
                Issue(f"YAML value error: {exc}", mark=Mark(file, 1, 1), code="yaml-syntax")
            )
            return None, smap, issues
        return data, smap, issues
    finally:
        loader.dispose()
