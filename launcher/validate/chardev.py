"""Character devices and their consumers (docs/stratovirt.md: "Backends and their consumers",
"Control", "Character devices, serial and consoles").

Every consumer (console, monitor, vhost-user net) *takes* its chardev in StratoVirt, so a
chardev can serve exactly one of them; the second use fails at start-up with "not found or is
in use", which is exactly the kind of late error a manifest check should move earlier.
"""

from __future__ import annotations

from launcher import model as m
from launcher.manifest.sourcemap import Path
from launcher.validate.base import Context


def check(ctx: Context) -> None:
    man = ctx.manifest
    by_id = {c.id: c for c in man.chardevs}
    chars = list(man.chardevs)
    if man.serial is not None:
        chars.append(man.serial)
    for c in chars:
        p: Path = ("serial",) if c is man.serial else ("chardevs", c.id)
        needs_path = c.backend in (m.ChardevBackend.SOCKET, m.ChardevBackend.FILE)
        if needs_path and not c.path:
            ctx.add(
                "chardev-options",
                p,
                f"a {c.backend.value} chardev needs a path",
                'add path = "/run/<name>.sock"',
            )
        if not needs_path and c.path:
            ctx.warn(
                "chardev-options",
                (*p, "path"),
                f"path is ignored for {c.backend.value}",
                "remove path",
            )
        if c.backend is not m.ChardevBackend.SOCKET and (c.server or c.nowait):
            key = "server" if c.server else "nowait"
            ctx.add(
                "chardev-options",
                (*p, key),
                f"{key} only applies to socket chardevs",
                f"remove {key}",
            )
    users: dict[str, Path] = {}

    def use(cid: str, path: Path, what: str) -> m.Chardev | None:
        if cid not in by_id:
            import difflib  # only when a reference is wrong

            close = difflib.get_close_matches(cid, list(by_id), n=1)
            ctx.add(
                "chardev-unknown",
                path,
                f"{what} uses chardev {cid!r}, which is not declared",
                f"did you mean {close[0]!r}?" if close else f"declare it as [chardevs.{cid}]",
            )
            return None
        if cid in users:
            ctx.add(
                "chardev-consumed",
                path,
                f"chardev {cid!r} is already used by"
                f" {'.'.join(str(k) for k in users[cid])}; each chardev serves one device",
                "declare another chardev",
            )
            return None
        users[cid] = path
        return by_id[cid]

    for con in man.consoles:
        use(con.chardev, ("consoles", con.id, "chardev"), "console")
    for i, mon in enumerate(man.monitors):
        cd = use(mon.chardev, ("monitors", i, "chardev"), "monitor")
        if cd is not None and not (
            cd.backend is m.ChardevBackend.SOCKET and cd.server and cd.nowait
        ):
            ctx.add(
                "monitor-chardev",
                ("monitors", i, "chardev"),
                f"monitor chardev {cd.id!r} must be a socket with server and nowait",
                'set backend = "socket", server = true, nowait = true',
            )
    for n in man.nets:
        if n.type is m.NetType.VHOST_USER and n.chardev:
            cd = use(n.chardev, ("nets", n.id, "chardev"), "vhost-user net")
            if cd is not None and (
                cd.backend is not m.ChardevBackend.SOCKET or cd.server or cd.nowait
            ):
                ctx.add(
                    "vhost-user-chardev",
                    ("nets", n.id, "chardev"),
                    f"chardev {cd.id!r}"
                    " must be a client socket (no server, no nowait) for vhost-user",
                    'set backend = "socket" and remove server/nowait',
                )
    if ctx.standard and len(man.consoles) > 1:
        ctx.add(
            "console-limit",
            ("consoles", man.consoles[1].id),
            f"{len(man.consoles)}"
            " consoles; a standard VM fits one (it shares the virtio-serial address)",
            "keep one console or use a microvm",
        )
