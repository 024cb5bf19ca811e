"""What changed between two manifests, key by key, and how each change reaches a running VM.

For a controller that keeps running VMs equal to their manifests (the GitOps agent): ``diff``
lists every changed key with its old and new value and the apply mode declared on the key
(``launcher.keys``): ``restart``, or live with the QMP commands that apply it. Entries of
tables keyed by id (``[drives.<id>]``) are matched by id, so an added or removed drive is one
change with the table's apply mode (a hot-plugged disk), and a changed one is a change per key.

The declared live paths are the engine's and StratoVirt's microvm hot-replace slots; a change
that cannot take them (another machine type, a PCI device, a vhost NIC) is reported as a
restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher import keys as k
from launcher import model as m
from launcher.manifest.sourcemap import Path, format_path

_SLOTS = (k.HOT_REPLACE_DISK, k.HOT_REPLACE_NIC)


@dataclass(frozen=True, slots=True)
class Change:
    """One changed manifest key: ``old`` or ``new`` is None when the key or entry is absent."""

    path: str  # the manifest key path, as validation prints it: drives.data.iops
    old: Any
    new: Any
    apply: k.Apply

    @property
    def live(self) -> bool:
        return self.apply.live


def diff(old: m.Manifest, new: m.Manifest) -> list[Change]:
    """Every key whose value differs, in manifest key order (``source`` and ``base_dir`` are
    where the manifests came from, not what they say, and are not compared)."""
    out: list[Change] = []
    _walk(old, new, (), out, new)
    return out


def needs_restart(changes: list[Change]) -> bool:
    """Whether some change only takes effect when the VM restarts."""
    return any(c.apply.restarts for c in changes)


def _walk(old: Any, new: Any, path: Path, out: list[Change], man: m.Manifest) -> None:
    for s in k.specs(type(new)):
        a, b = getattr(old, s.attr), getattr(new, s.attr)
        if a == b:
            continue
        where = (*path, *s.decl.at, s.name)
        if s.kind == k.SECTION and a is not None and b is not None:
            _walk(a, b, where, out, man)
        elif s.kind == k.TABLE:
            _entries(s, a, b, where, out, man)
        else:
            out.append(Change(format_path(where), a, b, _apply(s.decl.apply, old, new, man)))


def _entries(
    s: k.Spec, old: tuple[Any, ...], new: tuple[Any, ...], path: Path, out: list[Change],
    man: m.Manifest,
) -> None:  # fmt: skip
    before = {x.id: x for x in old}
    after = {x.id: x for x in new}
    for ident in [*before, *(i for i in after if i not in before)]:
        a, b = before.get(ident), after.get(ident)
        if a is None or b is None:
            out.append(Change(format_path((*path, ident)), a, b, _apply(s.decl.apply, a, b, man)))
        elif a != b:
            _walk(a, b, (*path, ident), out, man)


def _apply(apply: k.Apply, old: Any, new: Any, man: m.Manifest) -> k.Apply:
    """The declared apply mode, or restart where the device cannot use a hot-replace slot."""
    if apply not in _SLOTS:
        return apply
    if man.machine.type is not m.MachineType.MICROVM:
        return k.RESTART
    for dev in (old, new):
        if dev is None:
            continue
        if dev.transport is m.Transport.PCI:
            return k.RESTART
        if isinstance(dev, m.Net) and (dev.vhost or dev.type is not m.NetType.TAP):
            return k.RESTART
    return apply
