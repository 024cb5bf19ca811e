"""What a source says this host runs: every manifest validated, the host's VMs picked out.

Every manifest of the revision is loaded, validated and compiled to an engine plan (a manifest
the builtin engine cannot run is as invalid here as a broken one), whatever host it names: an invalid
manifest anywhere blocks the apply (``Desired.errors``), because a broken file may be the one
that moved a VM to this host. The rules across manifests (``launcher.gitops.inventory``) then
run for this host.

Parsing 1,000 manifests takes over a second, so each valid manifest's facts (name, hosts,
policy, model hash, the values the cross-manifest rules compare) are cached under the runtime
root, keyed by its content id, its path, the folder its paths resolve against and the
version of svlaunch's code: an unchanged manifest is not parsed again. The full model is loaded
only for the VMs an apply starts or changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from launcher import keys as k
from launcher import model as m
from launcher.errors import Issue, Mark
from launcher.gitops.source import MAX_MANIFEST, Entry, Snapshot

CACHE_FILE = "parsed.json"
CACHE_LIMIT = 20_000


def model_value(obj: Any) -> Any:
    """A model value as plain JSON data, by its declared keys (manifest spellings)."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, tuple):
        return [model_value(v) for v in obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        specs = k.specs(type(obj))
        if specs:
            return {s.name: model_value(getattr(obj, s.attr)) for s in specs}
        return {f.name: model_value(getattr(obj, f.name)) for f in fields(obj)}
    return obj


def model_hash(man: m.Manifest) -> str:
    """The hash of the normalized model: defaults filled, paths absolute, order kept; where
    the manifest came from (``source``, ``base_dir``) is not part of it."""
    text = json.dumps(model_value(man), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_CODE_VERSION: list[str] = []


def code_version() -> str:
    """What a cached validation result depends on besides the file: svlaunch's code."""
    if not _CODE_VERSION:
        top = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256()
        for folder, _, files in sorted(os.walk(top)):
            for name in sorted(files):
                if name.endswith((".py", ".json")):
                    st = os.stat(os.path.join(folder, name))
                    digest.update(f"{folder}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        _CODE_VERSION.append(digest.hexdigest()[:16])
    return _CODE_VERSION[0]


@dataclass
class Wanted:
    """One VM of the source for this host."""

    name: str
    entry: Entry
    shown: str  # the manifest as messages name it
    file: str  # where the manifest file is (git: once the revision is materialized)
    base_dir: str
    format: str
    facts: dict[str, Any]

    @property
    def model_hash(self) -> str:
        return str(self.facts["hash"])

    @property
    def depends_on(self) -> list[str]:
        return list(self.facts["depends_on"])


@dataclass
class Desired:
    """The revision's VMs for ``host`` and every issue found on the way."""

    snapshot: Snapshot
    host: str
    vms: dict[str, Wanted] = field(default_factory=dict)
    elsewhere: int = 0  # manifests for other hosts only
    results: list[tuple[str, list[Issue]]] = field(default_factory=list)  # files with issues
    texts: dict[str, str] = field(default_factory=dict)  # manifest texts read (snippets)
    _manifests: dict[str, m.Manifest] = field(default_factory=dict, repr=False)

    @property
    def errors(self) -> int:
        return sum(1 for _, issues in self.results for i in issues if i.is_error)

    def manifest(self, name: str) -> m.Manifest:
        """The full model of a wanted VM (loaded now unless this run parsed it already)."""
        w = self.vms[name]
        found = self._manifests.get(w.shown)
        if found is None:
            from launcher.errors import InvalidInput
            from launcher.manifest.load import load_text_full

            r = load_text_full(self.text_of(w), w.format, w.shown, w.base_dir)
            if r.manifest is None:
                raise InvalidInput([i for i in r.issues if i.is_error])
            found = self._manifests[w.shown] = r.manifest
        return found

    def text_of(self, w: Wanted) -> str:
        if w.shown not in self.texts:
            raw = self.snapshot.read([w.entry])[w.entry.path]
            self.texts[w.shown] = raw.decode("utf-8")
        return self.texts[w.shown]


def build(snap: Snapshot, host: str, workdir: Path | None) -> Desired:
    """Validate every manifest of ``snap``; keep ``host``'s VMs. ``workdir`` holds the parse
    cache (None: no cache)."""
    from launcher.gitops.inventory import check_inventory, cross_check, load_inventory, runs_on

    out = Desired(snap, host)
    cache = _Cache(workdir)
    results: dict[str, list[Issue]] = {}
    loaded: list[tuple[str, dict[str, Any], Wanted]] = []
    misses = [e for e in snap.manifests if cache.get(_cache_key(snap, e)) is None]
    texts = snap.read(misses) if misses else {}
    for issue in snap.issues:
        results.setdefault(issue.mark.file if issue.mark else "", []).append(issue)
    for entry in snap.manifests:
        shown = _shown(snap, entry)
        base_dir = os.path.dirname(snap.file(entry))
        fmt = "toml" if entry.path.endswith(".toml") else "yaml"
        key = _cache_key(snap, entry)
        f = cache.get(key)
        if f is None:
            f, issues = _load(texts[entry.path], shown, fmt, base_dir, out)
            if issues:
                results[shown] = issues
            if f is None:
                continue
            cache.put(key, f)
        w = Wanted(f["name"], entry, shown, snap.file(entry), base_dir, fmt, f)
        loaded.append((shown, f, w))
    items = [(shown, f) for shown, f, _ in loaded]
    mine = [(shown, f) for shown, f in items if runs_on(f, host)]
    for shown, issues in cross_check(mine, [host]).items():
        results.setdefault(shown, []).extend(_locate(out, shown, issues))
    if snap.inventory is not None:
        raw = snap.read([snap.inventory])[snap.inventory.path]
        inv = load_inventory(raw.decode("utf-8", "replace"), _shown(snap, snap.inventory))
        own, per_file = check_inventory(inv, items)
        if inv.issues or own:
            results.setdefault(inv.file, []).extend([*inv.issues, *own])
        for shown, issues in per_file.items():
            results.setdefault(shown, []).extend(_locate(out, shown, issues))
    for _, f, w in loaded:
        if runs_on(f, host):
            out.vms.setdefault(w.name, w)
        else:
            out.elsewhere += 1
    out.results = [(file, issues) for file, issues in results.items() if issues]
    cache.save()
    return out


def _shown(snap: Snapshot, entry: Entry) -> str:
    """A git manifest is named by its path in the repository; a folder's by its real path."""
    return snap.file(entry) if snap.spec.kind == "folder" else entry.path


def _cache_key(snap: Snapshot, entry: Entry) -> str:
    base = os.path.dirname(snap.file(entry))
    return hashlib.sha256(f"{entry.blob}\0{entry.path}\0{base}".encode()).hexdigest()[:32]


def _load(
    raw: bytes, shown: str, fmt: str, base_dir: str, out: Desired
) -> tuple[dict[str, Any] | None, list[Issue]]:
    """Parse and validate one manifest; its facts when valid, and its issues (located)."""
    from launcher.gitops.inventory import facts
    from launcher.manifest.load import load_text_full

    if len(raw) > MAX_MANIFEST:
        return None, [_unreadable(shown, "the manifest is larger than 1 MiB")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [_unreadable(shown, f"the manifest is not UTF-8 text (byte {exc.start})")]
    out.texts[shown] = text
    r = load_text_full(text, fmt, shown, base_dir)
    if r.manifest is None:
        return None, [i for i in r.issues if i.is_error]
    from launcher.compile.engine_plan import compile_plan
    from launcher.errors import InvalidInput

    try:  # valid, and something the builtin engine runs (not q35, not pflash...)
        compile_plan(r.manifest)
    except InvalidInput as exc:
        return None, r.smap.locate([i for i in exc.issues if i.is_error])
    f = facts(r.manifest)
    f["hash"] = model_hash(r.manifest)
    out._manifests[shown] = r.manifest
    return f, []  # warnings are svlaunch validate's: a valid manifest is not reported


def _unreadable(shown: str, why: str) -> Issue:
    return Issue(why, mark=Mark(shown), code="file-unreadable", hint="save it as UTF-8 text")


def _locate(out: Desired, shown: str, issues: list[Issue]) -> list[Issue]:
    """Place cross-manifest issues (key paths) in their file (its text is read again)."""
    from launcher.manifest.load import load_text_full

    w = next((w for w in out.vms.values() if w.shown == shown), None)
    entry = (
        w.entry
        if w
        else next((e for e in out.snapshot.manifests if _shown(out.snapshot, e) == shown), None)
    )
    if entry is None:
        return issues
    if shown not in out.texts:
        out.texts[shown] = out.snapshot.read([entry])[entry.path].decode("utf-8", "replace")
    fmt = "toml" if entry.path.endswith(".toml") else "yaml"
    base = os.path.dirname(out.snapshot.file(entry))
    return load_text_full(out.texts[shown], fmt, shown, base).smap.locate(issues)


class _Cache:
    """Facts of valid manifests by content, path and folder, for one version of the code."""

    def __init__(self, workdir: Path | None) -> None:
        self.path = workdir / CACHE_FILE if workdir is not None else None
        self.entries: dict[str, Any] = {}
        self.used: set[str] = set()
        self.dirty = False
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("code") == code_version():
            entries = data.get("entries")
            self.entries = entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.entries.get(key)
        if isinstance(found, dict) and "hash" in found and "name" in found:
            self.used.add(key)
            return found
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.entries[key] = value
        self.used.add(key)
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        from launcher.gitops.state import write_atomic

        keep = {k: v for k, v in self.entries.items() if k in self.used}
        if len(keep) < CACHE_LIMIT:  # entries of other sources or revisions, newest kept
            for key, value in self.entries.items():
                if len(keep) >= CACHE_LIMIT:
                    break
                keep.setdefault(key, value)
        data = json.dumps({"code": code_version(), "entries": keep}, separators=(",", ":"))
        try:
            write_atomic(self.path.parent, self.path.name, data.encode())
        except OSError:
            pass  # a cache: the next run parses again
