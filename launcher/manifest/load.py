"""File → located issues → ``Manifest``: the pipeline every command uses.

parse (TOML/YAML, syntax issues located) → shape (JSON Schema) → build (value syntax, paths)
→ semantic rules (``launcher.validate``) → marks attached from the source map. Each stage
reports all of its issues; a later stage runs only when the earlier ones found no error, so
one mistake is never reported three times in three wordings.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any

from launcher.errors import InvalidInput, Issue, Mark
from launcher.manifest.sourcemap import Path, SourceMap, format_path
from launcher.model import Manifest

MAX_BYTES = 1 << 20
FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


def _file_order(issue: Issue) -> tuple[int, int]:
    """Line and column (issues without a place first); ``sorted`` keeps ties in their order."""
    return (issue.mark.line, issue.mark.col) if issue.mark is not None else (0, 0)


def format_of(path: str) -> str | None:
    return FORMATS.get(os.path.splitext(path)[1].lower())


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything one load produced: the model (None on error), issues, and the marks."""

    manifest: Manifest | None
    issues: list[Issue]
    smap: SourceMap


def load_text(
    text: str,
    fmt: str,
    source: str = "<memory>",
    base_dir: str | None = None,
    *,
    target: str = "engine",
) -> tuple[Manifest | None, list[Issue]]:
    """Parse and validate ``text``; the manifest is None when any issue is an error."""
    r = load_text_full(text, fmt, source, base_dir, target=target)
    return r.manifest, r.issues


def load_text_full(
    text: str,
    fmt: str,
    source: str = "<memory>",
    base_dir: str | None = None,
    *,
    target: str = "engine",
) -> Loaded:
    """``load_text`` that also returns the source map (for run-wide checks and host checks)."""
    if fmt == "toml":
        from launcher.manifest.toml_loader import load_toml as parse
    elif fmt == "yaml":
        from launcher.manifest.yaml_loader import load_yaml as parse
    else:
        raise ValueError(f"unknown manifest format {fmt!r}")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not _utf8(text):  # text from a caller that decoded bytes with surrogateescape
        at = next(n for n, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
        line = text.count("\n", 0, at) + 1
        issue = Issue(
            "the manifest is not UTF-8 text",
            mark=Mark(source, line, at - (text.rfind("\n", 0, at) + 1) + 1),
            code="file-unreadable",
            hint="save the file as UTF-8",
        )
        return Loaded(None, [issue], SourceMap(source))
    data, smap, issues = parse(text, source)
    if issues:
        return Loaded(None, smap.locate(issues), smap)
    from launcher.manifest.plain import check_plain

    issues = check_plain(data, smap)
    if issues:
        return Loaded(None, issues, smap)
    if not isinstance(data, dict):
        issue = Issue(
            "a manifest is a table of keys (name = ..., [machine] ...)",
            mark=smap.mark(()),
            code="not-a-table",
            hint='start with name = "my-vm"',
        )
        return Loaded(None, [issue], smap)
    from launcher.manifest.schema import check_shape

    issues = check_shape(data)
    if issues:  # in file order, as a reader goes through them
        located = smap.locate(issues)
        return Loaded(None, sorted(located, key=_file_order), smap)
    from launcher.manifest.build import build_manifest

    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(source))
    manifest, issues = build_manifest(data, source, base)
    issues += _undecodable_paths(manifest, data, base)
    if any(i.is_error for i in issues):
        return Loaded(None, smap.locate(issues), smap)
    from launcher.validate import check_model

    issues = smap.locate(issues + check_model(manifest, target))
    return Loaded(None if any(i.is_error for i in issues) else manifest, issues, smap)


def _undecodable_paths(manifest: Manifest, data: dict, base: str) -> list[Issue]:
    """Relative paths that resolve under a folder whose name is not UTF-8.

    Paths travel as UTF-8 text (StratoVirt's argv as printed, the JSON plan, QMP replies), so a
    byte that is not UTF-8 cannot; file names themselves are UTF-8 (the file was decoded), so
    only the manifest's folder can bring one in.
    """
    if _utf8(base):
        return []
    from launcher.manifest.build import resolve_path

    bad = {s for s in _strings(manifest) if s != manifest.source and s != manifest.base_dir}
    bad = {s for s in bad if not _utf8(s)}
    if not bad:
        return []
    issues: list[Issue] = []
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:  # in document order
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += reversed([((*path, k), v) for k, v in value.items()])
        elif isinstance(value, list):
            stack += reversed([((*path, n), v) for n, v in enumerate(value)])
        elif isinstance(value, str) and resolve_path(value, base) in bad:
            issues.append(_undecodable(format_path(path), base))
    return issues or [_undecodable("", base)]


def _undecodable(path: str, base: str) -> Issue:
    return Issue(
        f"this relative path lies under {base}, whose name is not UTF-8",
        path,
        "rename the folder (or write an absolute path): svlaunch passes paths on as UTF-8",
        code="path-not-utf8",
    )


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(value: object) -> list[str]:
    """Every string in a model value (dataclasses, tuples, enums' values skipped)."""
    from dataclasses import fields, is_dataclass

    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, tuple):
            stack.extend(v)
        elif is_dataclass(v) and not isinstance(v, type):
            stack.extend(getattr(v, f.name) for f in fields(v))
    return out


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _unreadable(path: str, reason: str, hint: str) -> tuple[None, list[Issue]]:
    return None, [
        Issue(
            f"cannot read the manifest: {reason}",
            mark=Mark(path),
            code="file-unreadable",
            hint=hint,
        )
    ]


def read_source(path: str) -> tuple[str | None, list[Issue]]:
    """The file's text, or an issue saying why it cannot be read.

    Only a regular file is read: opened without blocking (a FIFO would wait for a writer
    forever, a device or a socket never ends), then checked with ``fstat`` on the open file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # open(2) on a socket
            return _unreadable(path, "it is a socket, not a file", "name a manifest file")
        reason = exc.strerror or str(exc)
        return _unreadable(path, reason, "check the path and permissions")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
            return _unreadable(path, f"it is {kind}, not a file", "name a manifest file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        return _unreadable(path, exc.strerror or str(exc), "check the file")
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        return None, [
            Issue(
                "the manifest is larger than 1 MiB",
                mark=Mark(path),
                code="file-unreadable",
                hint="is this really a manifest?",
            )
        ]
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, [
            Issue(
                f"the manifest is not UTF-8 text (byte {raw[exc.start]:#x})",
                mark=Mark(path, line),
                code="file-unreadable",
                hint="save the file as UTF-8",
            )
        ]


def load_file(path: str, *, target: str = "engine") -> tuple[Manifest | None, list[Issue]]:
    """``load_text`` for a file; the format comes from its extension."""
    r = load_file_full(path, target=target)
    return r.manifest, r.issues


def load_file_full(path: str, *, target: str = "engine") -> Loaded:
    """``load_file`` that also returns the source map."""
    fmt = format_of(path)
    if fmt is None:
        issue = Issue(
            f"cannot tell the format of {os.path.basename(path)!r}",
            mark=Mark(path),
            code="unknown-format",
            hint="name the file *.toml, *.yaml or *.yml",
        )
        return Loaded(None, [issue], SourceMap(path))
    text, issues = read_source(path)
    if text is None:
        return Loaded(None, issues, SourceMap(path))
    return load_text_full(text, fmt, path, target=target)


def load_manifest(
    path: str, *, target: str = "engine", warnings: list[Issue] | None = None
) -> Manifest:
    """The validated manifest at ``path``; raises ``InvalidInput`` with every located issue.

    Warnings do not stop loading; pass a list as ``warnings`` to receive them.
    """
    manifest, issues = load_file(path, target=target)
    if manifest is None:
        raise InvalidInput(issues)
    if warnings is not None:
        warnings.extend(issues)
    return manifest
