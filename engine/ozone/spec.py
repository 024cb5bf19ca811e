"""Plan → SandboxSpec: every check the sandbox makes before it touches the host.

``build_spec`` reads the host (stat, readlink, /proc/mounts) but changes nothing. It collects
every problem (bad uid, unknown capability, missing drive, a drive the uid cannot write, a netns
path that is no namespace, a cgroup key ozone does not know, a device the host lacks) and raises
them together as ``InvalidInput``, each with its manifest key and what to change.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidInput, Issue
from engine.ownfiles import plan_chardevs
from engine.ozone import caps, rules
from engine.ozone import sys as osys
from engine.ozone.cgroup import Limits, parse_limits
from engine.ozone.layout import Bind, Device, can_access, device_spec
from engine.ozone.runtime import Runtime

FILE_ROLES = ("kernel", "initrd", "drive", "mem-path", "rng", "trace", "snapshot")
CREATABLE_ROLES = ("chardev", "log")  # files the engine writes: created for it when missing
DEFAULT_RLIMITS = (("RLIMIT_CORE", 0, 0), ("RLIMIT_NOFILE", 4096, 4096))


@dataclass(frozen=True)
class SandboxSpec:
    """Everything ``realize`` needs, validated. ``jail`` is ``<root>/<exec_name>/<name>``."""

    name: str
    exec_name: str
    uid: int
    gid: int
    root: str
    caps: int
    netns: str | None
    binds: tuple[Bind, ...]
    devices: tuple[Device, ...]
    own_dirs: tuple[str, ...]  # socket dirs to create for the VM (owned by uid:gid)
    own_files: tuple[str, ...]  # chardev/log files to create for the VM (owned by uid:gid)
    #: (host socket path, private socket path): the host path becomes a symlink to the socket the
    #: engine makes in a private dir (bound at the socket's dir), when the uid cannot write there
    redirects: tuple[tuple[str, str], ...]
    limits: Limits
    keep_fds: tuple[int, ...]
    rlimits: tuple[tuple[str, int, int], ...]
    clean_resource: bool
    seccomp: bool
    runtime: Runtime
    plan_json: str  # the plan the jailed engine reads at /plan.json
    pidfile: str | None = None  # written by the supervisor with the engine's host pid
    #: host paths of the sockets the engine listens on (redirected ones: in the private dir);
    #: after a crash teardown removes these, and only these, if nobody serves them
    sockets: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def jail(self) -> str:
        return os.path.join(self.root, self.exec_name, self.name)

    @property
    def hostname(self) -> str:
        return self.name[:64]


def _chardev_backends(plan: Any) -> dict[str, str]:
    return {os.path.abspath(c.path): c.backend for c in plan_chardevs(plan) if c.path}


def build_spec(
    plan: Any,
    runtime: Runtime,
    *,
    dev_root: str = "/dev",
    locate: Callable[[str], str | None] | None = None,
) -> SandboxSpec:
    """Validate ``plan.sandbox`` and the plan's host files against the host; see module doc.

    ``locate`` maps a host path the plan names to the manifest key that names it (the launcher
    passes one, so that ``svlaunch check`` places each problem at its key); without it, or for
    a path it does not know, an issue is placed at the ozone key it concerns.
    """
    sb = plan.sandbox
    issues: list[Issue] = []

    def bad(message: str, key: str, hint: str = "", code: str = "", subject: str = "") -> None:
        where = (locate(subject) if locate and subject else None) or f"ozone.{key}"
        issues.append(Issue(message, path=where, hint=hint, code=code or "ozone"))

    raw_name = sb.name
    problem = rules.name_problem(raw_name)
    if problem:
        bad(problem, "name", rules.NAME_HINT)
    exec_name = rules.exec_name(sb.exec_file)
    for key, value in (("uid", sb.uid), ("gid", sb.gid)):
        problem = rules.id_problem(key, value)
        if problem:
            bad(problem, key)
    uid, gid = sb.uid, sb.gid
    jail = rules.jail_of(sb.root, sb.exec_file, raw_name)
    if not os.path.isabs(sb.root):
        bad(f"jail base {sb.root!r} must be an absolute path", "root")
    cap_mask, cap_errors = caps.parse(sb.capabilities)
    for e in cap_errors:
        bad(e, "capabilities", "use names from capabilities(7), e.g. CAP_NET_ADMIN")
    warnings = [
        f"capability {n} lets the engine leave the sandbox"
        for n in caps.names_of(cap_mask)
        if n in caps.DANGEROUS
    ]
    if sb.netns is not None:
        kind = osys.ns_type(sb.netns)
        if kind is None:
            bad(f"network namespace {sb.netns!r} does not exist or is not a namespace file", "netns",
                "create it with `ip netns add NAME` and use /run/netns/NAME (or /proc/PID/ns/net)",
                subject=sb.netns)  # fmt: skip
        elif kind != osys.CLONE_NEWNET:
            bad(f"{sb.netns!r} is a namespace, but not a network namespace", "netns",
                "use /run/netns/NAME (from `ip netns add NAME`) or /proc/PID/ns/net",
                subject=sb.netns)  # fmt: skip
    bound = tuple(n for b in plan.memory.bindings if b.policy == "bind" for n in b.host_nodes)
    limits, cg_errors = parse_limits(sb.cgroup, sb.numa, bound)
    for e in cg_errors:
        bad(e, "cgroup", "supported: cpuset.cpus=0-3 memory.limit_in_bytes=1G, numa: 0")

    # -- host files: bound at their resolved host path, access checked for uid/gid ----------
    binds: list[Bind] = []
    own_dirs: list[str] = []
    own_files: list[str] = []
    sockets = _chardev_backends(plan)
    sock_base = os.path.join(sb.root, exec_name, f"{raw_name}.sock")

    def need(path: str, role: str, writable: bool, key: str, subject: str = "") -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            bad(f"{role} {path!r}: {e.strerror}", key, "fix the path in the manifest", subject=path)
            return
        want = 4 | (2 if writable else 0) | (1 if stat.S_ISDIR(st.st_mode) else 0)
        if not can_access(st, uid, gid, want):
            verb = "read and write" if writable else "read"
            bad(f"uid {uid} (gid {gid}) cannot {verb} {role} {path!r} "
                f"(owner {st.st_uid}:{st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o})", key,
                f"chown {uid}:{gid} {path}, or chmod it so that uid {uid} can {verb} it",
                code="ozone-access", subject=subject or path)  # fmt: skip
            return
        real = os.path.realpath(path)
        binds.append(Bind(real, real, stat.S_ISDIR(st.st_mode), writable, role, alias=path))

    redirects: list[tuple[str, str]] = []
    private_dirs: dict[str, str] = {}  # socket dir -> its private stand-in

    #: sockets the engine creates (it listens); a client socket belongs to someone else
    listening = {os.path.abspath(q) for q in plan.qmp}
    listening |= {
        os.path.abspath(c.path)
        for c in plan_chardevs(plan)
        if c.path and c.backend == "socket" and c.server
    }

    engine_sockets = {p: p for p in listening}

    def redirect(path: str, d: str, role: str) -> None:
        """The engine gets a private dir at ``d`` in the jail; the host path becomes a symlink to
        the socket it makes there."""
        if d not in private_dirs:
            private_dirs[d] = os.path.join(sock_base, str(len(private_dirs)))
            binds.append(Bind(private_dirs[d], d, True, True, f"{role}-dir"))
        redirects.append((path, os.path.join(private_dirs[d], os.path.basename(path))))
        engine_sockets[path] = redirects[-1][1]

    def socket(path: str, role: str) -> None:
        d = os.path.dirname(path)
        if rules.in_jail(path, jail):
            # ozone's ./name: a socket in the jail folder, which realize() creates (it must not
            # exist before); reached from the host through the same redirect
            redirect(path, d, role)
            return
        if not os.path.isdir(d):
            if d not in own_dirs:
                own_dirs.append(d)
                binds.append(Bind(d, d, True, True, f"{role}-dir"))
            return
        st = os.stat(d)
        problem = rules.shared_dir_problem(path, role)
        if problem:
            bad(problem, "sources", rules.SHARED_HINT, subject=path)
        elif can_access(st, uid, gid, 7) or path not in listening:
            if not any(b.target == d for b in binds):
                need(d, f"{role} socket directory", True, "uid", subject=path)
        else:
            # svlaunch's own runtime dir (root, 0700) and the like
            redirect(path, d, role)

    seen_sockets: set[str] = set()
    wanted_sockets = [(os.path.abspath(q), "qmp") for q in plan.qmp]
    wanted_sockets += [(p, "chardev") for p, kind in sockets.items() if kind == "socket"]
    wanted_sockets += [(os.path.abspath(hf.path), hf.role) for hf in plan.host_files
                       if hf.role == "qmp"]  # fmt: skip
    for path, role in wanted_sockets:
        if path not in seen_sockets:
            seen_sockets.add(path)
            socket(path, role)
    for hf in plan.host_files:
        path = os.path.abspath(hf.path)
        if hf.role == "rng" and path in ("/dev/urandom", "/dev/random"):
            continue  # a device node, created in /dev
        if hf.role == "pidfile":
            continue  # the supervisor writes it (the engine's pid is 1 inside the jail)
        if hf.role == "qmp" or (hf.role == "chardev" and sockets.get(path) == "socket"):
            continue  # above
        if hf.role in CREATABLE_ROLES and not os.path.exists(path):
            own_files.append(path)
            binds.append(Bind(path, path, False, True, hf.role))
            continue
        need(path, hf.role, hf.writable, "uid" if hf.role in FILE_ROLES else hf.role)
    for c in plan_chardevs(plan):
        if c.backend == "pty":
            bad(f"chardev {c.id!r} is a pty: {rules.PTY_PROBLEM}", "sources", rules.PTY_HINT,
                subject=f"chardev:{c.id}")  # fmt: skip
    for src in sb.sources:
        need(os.path.abspath(src), "source", False, "sources")
    for path in runtime.paths:
        need(path, "runtime", False, "uid")

    # -- device nodes: only what this VM uses -----------------------------------------------
    wanted = [
        ("/dev/kvm", 0o660, "the VM"),
        ("/dev/urandom", 0o666, "Python"),
        ("/dev/null", 0o666, "Python"),
    ]
    kinds = {type(d).__name__ for d in plan.devices}
    nets = [d for d in plan.devices if type(d).__name__ == "NetPlan"]
    if any(not d.fds for d in nets):
        wanted.append(("/dev/net/tun", 0o666, "a tap netdev"))
    if any(d.vhost and not d.vhostfds for d in nets):
        wanted.append(("/dev/vhost-net", 0o600, "vhost=on"))
    if "VsockPlan" in kinds and any(getattr(d, "vhostfd", None) is None for d in plan.devices):
        wanted.append(("/dev/vhost-vsock", 0o600, "vhost-vsock"))
    devices: list[Device] = []
    for path, mode, why in wanted:
        dev = device_spec(path, mode, dev_root)
        if dev is None:
            bad(f"the host has no {path} (needed for {why})", "exec_file",
                f"load the module that provides {path}, or remove {why} from the manifest")  # fmt: skip
        else:
            devices.append(dev)

    keep = sorted({fd for d in nets for fd in (*d.fds, *d.vhostfds)}
                  | {d.vhostfd for d in plan.devices if getattr(d, "vhostfd", None) is not None})  # fmt: skip
    if issues:
        raise InvalidInput(issues, f"sandbox: {len(issues)} problem(s) with the ozone section")
    jailed = dataclasses.replace(plan, pidfile=None, daemonize=False)
    return SandboxSpec(
        name=raw_name, exec_name=exec_name, uid=uid, gid=gid, root=sb.root, caps=cap_mask,
        netns=sb.netns, binds=tuple(binds), devices=tuple(devices), own_dirs=tuple(own_dirs),
        own_files=tuple(own_files), redirects=tuple(redirects), limits=limits, keep_fds=tuple(keep), rlimits=DEFAULT_RLIMITS,
        clean_resource=sb.clean_resource, seccomp=plan.seccomp, runtime=runtime,
        plan_json=jailed.dumps(), pidfile=plan.pidfile, warnings=tuple(warnings),
        sockets=tuple(sorted(engine_sockets.values())),
    )  # fmt: skip
