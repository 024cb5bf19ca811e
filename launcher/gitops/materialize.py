"""Writing a git source's revision into its stable folder (``.gitops/trees/<id>/``), file by file.

Split from ``source.py``, which reads a revision (fetch, list, cat) and writes nothing: this is
the one place that writes a tree, so its rules are read together: a file whose blob is
unchanged is left alone (a running VM may read it), a changed one is renamed over, a folder on
the way that is a symlink is never followed, a link out of the tree is never made, and only
files svlaunch wrote (its index) are ever removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from pathlib import Path

from launcher.gitops.source import Entry, Snapshot, cat_blobs

INDEX = ".svlaunch-tree.json"  # in a materialized tree: what svlaunch wrote (path -> blob)


def materialize(snap: Snapshot) -> None:
    """Make ``snap.root`` hold the revision's files (git sources; a folder is its own tree).

    Incremental: a file whose blob is unchanged is left as it is (a running VM may read it); a
    changed one is written to a scratch name and renamed over; a file of the previous
    revision that is gone is removed, and only files svlaunch wrote (its index) ever are.
    """
    if not snap._repo:
        return
    root = Path(snap.root)
    root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    before = _index(root)
    wanted = {p: e for p, e in snap._entries.items() if _safe(p)}
    todo = [e for p, e in wanted.items() if before.get(p) != f"{e.mode}:{e.blob}"]
    for start in range(0, len(todo), 256):
        chunk = todo[start : start + 256]
        blobs = cat_blobs(snap._repo, [e.blob for e in chunk])
        for e in chunk:
            _place(root, e, blobs[e.blob])
    for path in before:
        if path not in wanted:
            with contextlib.suppress(OSError):
                os.unlink(root / path)
    _write_atomic(root / INDEX, json.dumps({p: f"{e.mode}:{e.blob}" for p, e in wanted.items()}))


def _safe(path: str) -> bool:
    parts = path.split("/")
    return path != INDEX and all(p not in ("", ".", "..") for p in parts)


def _index(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _place(root: Path, entry: Entry, content: bytes) -> None:
    """Write one file of the tree; a folder on the way that is a symlink is never followed."""
    dest = root.joinpath(*entry.path.split("/"))
    folder = root
    for part in entry.path.split("/")[:-1]:
        folder = folder / part
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            os.mkdir(folder, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(folder)  # a file or link of an older revision where a folder is now
            os.mkdir(folder, 0o755)
    if entry.mode == "link":
        target = content.decode("utf-8", "surrogateescape")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), target))
        if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
            return  # a link out of the tree is not made (its manifest was refused already)
        scratch = dest.with_name(f".{dest.name}.svlaunch-new")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        os.symlink(target, scratch)
        os.rename(scratch, dest)
        return
    _write_atomic(dest, content, 0o755 if entry.mode == "exec" else 0o644)


def _write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    raw = data.encode() if isinstance(data, str) else data
    scratch = path.with_name(f".{path.name}.svlaunch-new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(scratch)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    if os.path.isdir(path) and not os.path.islink(path):
        _rmtree(path)
    os.rename(scratch, path)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
