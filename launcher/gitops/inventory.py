"""Rules across manifests, per host: what two VMs on one host must never share.

On one host, no two VMs may have the same name, MAC address, vsock CID or tap, serve the same
socket path (QMP, listening chardevs, the serial port), write the same file (pidfile, file
chardevs) or open the same disk image writable. A manifest without ``hosts`` runs on every host,
so it is checked against every other manifest; two manifests naming disjoint hosts never
conflict. ``depends-on`` must name VMs of the same host, without a cycle.

Each VM is reduced to its ``facts`` (plain JSON, cached by ``launcher.gitops.desired`` so an
unchanged manifest is not parsed again); issues carry key paths and are located by the caller.

The optional host inventory, ``.svlaunch/hosts.toml`` at the top of a source (or
``svlaunch validate --inventory FILE``), gives each host's CPUs and memory: a host whose VMs ask
for more is reported (a warning: over-commit is a choice), as is a ``hosts`` entry that names a
host the inventory does not list.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from launcher import model as m
from launcher.errors import Issue, Mark
from launcher.manifest.sourcemap import Path, format_path

EVERY = "*"  # the hosts no manifest names: only manifests without ``hosts`` run there

#: fact kind -> (what it is, hint)
_KINDS = {
    "mac": ("MAC address", "give each NIC its own mac"),
    "cid": ("vsock guest-cid", "give each VM its own guest-cid"),
    "tap": ("tap", "give each NIC its own ifname"),
    "socket": ("socket path", "give each VM its own socket paths"),
    "file": ("output file", "give each VM its own pidfile and chardev files"),
    "drive": (
        "writable disk",
        "two VMs writing one image corrupt it: copy it, or make it readonly",
    ),
}


def facts(man: m.Manifest) -> dict[str, Any]:
    """What the cross-manifest rules (and the diff) need of a VM, as JSON-ready values."""
    from engine.device_rules import default_mac

    taken: list[tuple[str, str, str]] = []  # (kind, value, key path)

    def add(kind: str, value: str | int | None, path: Path) -> None:
        if value is not None and value != "":
            taken.append((kind, str(value), format_path(path)))

    for n in man.nets:
        add("mac", (n.mac or default_mac(man.name, n.id)).lower(), ("nets", n.id, "mac"))
        if n.type is m.NetType.TAP:
            add("tap", n.ifname, ("nets", n.id, "ifname"))
    if man.vsock is not None:
        add("cid", man.vsock.guest_cid, ("vsock", "guest-cid"))
    for i, q in enumerate(man.qmp):
        add("socket", q, ("qmp", i) if len(man.qmp) > 1 else ("qmp",))
    for path, dev in [(("chardevs", c.id), c) for c in man.chardevs] + [(("serial",), man.serial)]:
        if dev is None or not dev.path:
            continue
        if dev.backend is m.ChardevBackend.SOCKET and dev.server:
            add("socket", dev.path, (*path, "path"))
        elif dev.backend is m.ChardevBackend.FILE:
            add("file", dev.path, (*path, "path"))
    add("file", man.pidfile, ("pidfile",))
    for d in man.drives:
        if not d.readonly:
            add("drive", d.file, ("drives", d.id, "file"))
    for i, p in enumerate(man.pflash):
        if not p.readonly:
            add("drive", p.file, ("pflash", i, "file"))
    return {
        "name": man.name,
        "hosts": list(man.hosts),
        "depends_on": list(man.depends_on),
        "taken": [list(t) for t in taken],
        "vcpus": man.cpu.cpus,
        "memory": man.memory.size,
        "restart": man.restart.value,
        "update": man.update.value,
        "paused": man.paused,
    }


def runs_on(f: dict[str, Any], host: str) -> bool:
    """Whether a VM with facts ``f`` runs on ``host`` (``EVERY``: the hosts no manifest names)."""
    return not f["hosts"] or host in f["hosts"]


def host_names(all_facts: list[dict[str, Any]]) -> list[str]:
    """Every host the manifests name, plus ``EVERY`` when some manifest runs everywhere."""
    named = sorted({h for f in all_facts for h in f["hosts"]})
    return named + ([EVERY] if any(not f["hosts"] for f in all_facts) else [])


def cross_check(
    items: list[tuple[str, dict[str, Any]]], hosts: list[str] | None = None
) -> dict[str, list[Issue]]:
    """Issues (key paths, no marks) per file for ``items`` (file, facts) in file order, on each
    of ``hosts`` (default: every host they name). A conflict is reported once, on the later
    file, naming the earlier one."""
    out: dict[str, list[Issue]] = defaultdict(list)
    seen_pairs: set[tuple[str, str, str]] = set()
    for host in hosts if hosts is not None else host_names([f for _, f in items]):
        on = [(file, f) for file, f in items if runs_on(f, host)]
        first: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, value) -> (file, name)
        for file, f in on:
            claims = [("name", f["name"], "name"), *[tuple(t) for t in f["taken"]]]
            for kind, value, path in claims:
                earlier = first.get((kind, value))
                if earlier is None:
                    first[kind, value] = (file, f["name"])
                    continue
                if earlier[0] == file or (file, path, earlier[0]) in seen_pairs:
                    continue
                seen_pairs.add((file, path, earlier[0]))
                out[file].append(_conflict(kind, value, path, earlier, host))
        out_deps = depends_issues(on, host)
        for file, issues in out_deps.items():
            for issue in issues:
                if (file, issue.path, issue.message) not in seen_pairs:
                    seen_pairs.add((file, issue.path, issue.message))
                    out[file].append(issue)
    return dict(out)


def _conflict(kind: str, value: str, path: str, earlier: tuple[str, str], host: str) -> Issue:
    where = "" if host == EVERY else f" on host {host!r}"
    if kind == "name":
        return Issue(
            f"VM name {value!r} is also used by {earlier[0]}{where}",
            path,
            "give every VM on a host its own name (or list disjoint hosts)",
            code="vm-name-duplicate",
        )
    what, hint = _KINDS[kind]
    return Issue(
        f"{what} {value} is also used by VM {earlier[1]!r} ({earlier[0]}){where}",
        path,
        hint,
        code="cross-duplicate",
    )


def depends_issues(on: list[tuple[str, dict[str, Any]]], host: str) -> dict[str, list[Issue]]:
    """``depends-on`` entries that name no VM of ``host``, and dependency cycles."""
    out: dict[str, list[Issue]] = defaultdict(list)
    names = {f["name"]: file for file, f in on}
    where = "" if host == EVERY else f" on host {host!r}"
    graph: dict[str, list[str]] = {}
    for file, f in on:
        deps = []
        for i, dep in enumerate(f["depends_on"]):
            if dep not in names:
                out[file].append(
                    Issue(
                        f"depends on {dep!r}, which does not run{where}",
                        format_path(("depends-on", i)),
                        "run both VMs on the same hosts, or drop the dependency",
                        code="cross-depends-on",
                    )
                )
            else:
                deps.append(dep)
        graph[f["name"]] = deps
    for cycle in _cycles(graph):
        file = names[cycle[0]]
        out[file].append(
            Issue(
                "depends-on forms a cycle: " + " -> ".join([*cycle, cycle[0]]),
                "depends-on",
                "a VM cannot wait for itself; drop one dependency of the cycle",
                code="cross-depends-on",
            )
        )
    return out


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of more than one VM (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            deps = graph.get(node, [])
            if i < len(deps):
                stack.append((node, i + 1))
                nxt = deps[i]
                if state.get(nxt) == 1:
                    found.append(path[path.index(nxt) :])
                elif nxt not in state:
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
    return found


def order(deps: dict[str, list[str]]) -> list[str]:
    """Names with every dependency before its dependents (stable: by name otherwise)."""
    done: list[str] = []
    placed: set[str] = set()
    pending = sorted(deps)
    while pending:
        ready = [n for n in pending if all(d in placed or d not in deps for d in deps[n])]
        if not ready:  # a cycle (validation refuses it): keep the rest in name order
            ready = pending
        for n in ready:
            placed.add(n)
            done.append(n)
        pending = [n for n in pending if n not in placed]
    return done


# -- the host inventory -------------------------------------------------------------------------


@dataclass
class Inventory:
    """``.svlaunch/hosts.toml``: each host's CPUs and memory (either may be absent)."""

    file: str
    hosts: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    marks: dict[str, Mark] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)


def load_inventory(text: str, file: str) -> Inventory:
    """Parse an inventory (TOML: ``[hosts.NAME] cpus = 16, memory = "64G"``); problems are
    located issues of the inventory file."""
    from launcher.manifest.toml_loader import load_toml
    from launcher.manifest.values import parse_size
    from launcher.validate.placement import is_host_name

    inv = Inventory(file)
    data, smap, issues = load_toml(text, file)
    if issues:
        inv.issues = issues
        return inv
    hosts = data.get("hosts") if isinstance(data, dict) else None
    extra = sorted(set(data) - {"hosts"}) if isinstance(data, dict) else []
    if not isinstance(hosts, dict) or extra:
        inv.issues.append(_bad(smap.mark(()), "an inventory is [hosts.NAME] tables only"))
        return inv
    for name, entry in hosts.items():
        mark = smap.mark(("hosts", name), "key")
        if not is_host_name(name) or not isinstance(entry, dict):
            inv.issues.append(_bad(mark, f"[hosts.{name}] is not a host name with a table"))
            continue
        unknown = sorted(set(entry) - {"cpus", "memory"})
        cpus, memory = entry.get("cpus"), entry.get("memory")
        try:
            size = None if memory is None else parse_size(memory)
        except ValueError:
            size = -1
        if unknown or not (cpus is None or (type(cpus) is int and cpus > 0)) or size == -1:
            inv.issues.append(_bad(mark, f"host {name!r}: give cpus (a count) and memory (a size)"))
            continue
        inv.hosts[name] = (cpus, size)
        inv.marks[name] = mark
    return inv


def _bad(mark: Mark, message: str) -> Issue:
    return Issue(
        message,
        mark=mark,
        code="inventory",
        hint='write [hosts.h1] with cpus = 16 and memory = "64G"',
    )


def check_inventory(
    inv: Inventory, items: list[tuple[str, dict[str, Any]]]
) -> tuple[list[Issue], dict[str, list[Issue]]]:
    """Over-commit per inventory host (issues of the inventory file) and ``hosts`` entries the
    inventory does not list (issues per manifest file, key paths). Warnings."""
    own: list[Issue] = []
    per_file: dict[str, list[Issue]] = defaultdict(list)
    for host, (cpus, memory) in sorted(inv.hosts.items()):
        on = [f for _, f in items if runs_on(f, host)]
        want_cpus, want_mem = sum(f["vcpus"] for f in on), sum(f["memory"] for f in on)
        for have, want, show in (
            (cpus, want_cpus, lambda n: f"{n} vCPUs"),
            (memory, want_mem, lambda b: f"{b >> 20} MiB of memory"),
        ):
            if have is not None and want > have:
                own.append(
                    Issue(
                        f"host {host!r} is over-committed: its {len(on)} VMs ask for"
                        f" {show(want)}, it has {show(have)} ({want / have:.2f}x)",
                        mark=inv.marks[host],
                        severity="warning",
                        code="inventory",
                        hint="move a VM to another host, or accept the over-commit",
                    )
                )
    for file, f in items:
        for i, host in enumerate(f["hosts"]):
            if host not in inv.hosts:
                per_file[file].append(
                    Issue(
                        f"host {host!r} is not in the inventory {inv.file}",
                        format_path(("hosts", i)),
                        "add it to the inventory, or fix the name",
                        severity="warning",
                        code="inventory",
                    )
                )
    return own, dict(per_file)
