"""Host probes for ``svlaunch check``: can *this* host run the manifest?

Kept apart from the pure rules (``launcher.validate``): these read /dev, /sys and /proc. Every
location is a field of ``Host`` so tests point it at a temporary tree; results are ``Issue``s
with key paths, located by the caller exactly like validation issues.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from engine.hostfiles import check_host_file
from launcher import model as m
from launcher.errors import Issue
from launcher.manifest.sourcemap import Path, format_path


@dataclass(frozen=True)
class Host:
    """Where the host's facts live (the real ones by default)."""

    dev: str = "/dev"
    sys: str = "/sys"
    proc: str = "/proc"
    is_root: bool = os.geteuid() == 0


class _Checks:
    def __init__(self, man: m.Manifest, host: Host, target: str = "engine") -> None:
        self.man = man
        self.host = host
        self.target = target
        self.issues: list[Issue] = []
        self._vms: list[_RunningVm] | None = None

    def running(self) -> list[_RunningVm]:
        """svlaunch's live VMs on this host (read once; nothing is cleaned up here)."""
        if self._vms is None:
            self._vms = _running_vms()
        return self._vms

    def itself(self) -> _RunningVm | None:
        """The running VM of this manifest's name: its sockets and taps are not conflicts."""
        return next((v for v in self.running() if v.name == self.man.name), None)

    def add(self, code: str, path: Path, message: str, hint: str, severity: str = "error") -> None:
        self.issues.append(Issue(message, format_path(path), hint, None, severity, code))

    def file(
        self, path: Path, f: str | None, what: str, write: bool = False, block_ok: bool = True
    ) -> None:
        """The engine's own host-file check (``engine.hostfiles``): what passes here opens there."""
        if not f:
            return
        problem = check_host_file(f, what=what, write=write, block_ok=block_ok)
        if problem is not None:
            self.add("host-file", path, problem.message, problem.hint)

    def drive(self, d: m.Drive) -> None:
        """The engine's own opening of the image (O_DIRECT when ``direct``) and its ``aio`` back
        end set up on it (``engine.io.probe``): a file system without O_DIRECT, io_uring
        disabled by sysctl or seccomp, Linux AIO out of events are reported here."""
        if not d.file:
            return
        if self.target != "engine":  # StratoVirt opens and serves its drives itself
            self.file(("drives", d.id, "file"), d.file, "drive image", write=not d.readonly)
            return
        from engine import device_rules as rules
        from engine.io.probe import check_drive

        aio = str(d.aio) if d.aio else rules.default_aio(d.direct)
        if rules.aio_problem(aio, d.direct) is not None:  # validation reports that one
            aio = "off"
        found = check_drive(
            d.file, what="drive image", aio=aio, direct=d.direct, write=not d.readonly
        )
        if found is not None:
            key, problem = found
            self.add("host-file", ("drives", d.id, key), problem.message, problem.hint)

    def run(self) -> list[Issue]:
        man = self.man
        self.kvm()
        me = self.itself()
        if me is not None:
            self.add(
                "host-running",
                ("name",),
                f"VM {me.name!r} is running (pid {me.pids[0]}): its own sockets and taps are in use",
                f"'svlaunch up' starts it again once it stopped ('svlaunch down {me.name}')",
                "warning",
            )
        self.file(("boot", "kernel"), man.boot.kernel, "kernel", block_ok=False)
        self.file(("boot", "initrd"), man.boot.initrd, "initrd", block_ok=False)
        for d in man.drives:
            self.drive(d)
        for i, p in enumerate(man.pflash):
            self.file(("pflash", i, "file"), p.file, "pflash image", write=not p.readonly)
        for r in man.rngs:
            if not os.path.exists(r.file):
                self.add(
                    "host-file",
                    ("rngs", r.id, "file"),
                    f"entropy source {r.file} does not exist",
                    "use /dev/urandom",
                )
        self.file(("trace",), man.trace, "trace event list", block_ok=False)
        if man.ozone is not None:
            if self.target == "stratovirt":  # the builtin engine only names its jail after it
                self.file(
                    ("ozone", "exec-file"), man.ozone.exec_file, "StratoVirt binary", block_ok=False
                )
            for i, s in enumerate(man.ozone.sources):
                if not os.path.exists(s):
                    self.add(
                        "host-file",
                        ("ozone", "sources", i),
                        f"source {s} does not exist",
                        "fix the path",
                    )
            if man.ozone.netns and not os.path.exists(man.ozone.netns):
                self.add(
                    "host-file",
                    ("ozone", "netns"),
                    f"network namespace {man.ozone.netns} does not exist",
                    "create it: ip netns add <name>",
                )
        if man.pidfile and os.path.exists(man.pidfile):
            self.add(
                "host-file",
                ("pidfile",),
                f"pidfile {man.pidfile} already exists; StratoVirt refuses to start",
                "remove the stale pidfile",
            )
        self.sockets()
        self.sandbox()
        self.taps()
        self.hugetlbfs()
        self.numa()
        self.vhost()
        if self.target == "engine" and man.incoming:
            from launcher.validate.snapshot import check_snapshot

            self.issues += check_snapshot(man)
        for v in man.vfio:
            dev = v.sysfsdev or (
                os.path.join(self.host.sys, "bus/pci/devices", v.host) if v.host else None
            )
            if dev and not os.path.exists(dev):
                self.add(
                    "host-file",
                    ("vfio", v.id),
                    f"PCI device {dev} does not exist",
                    "check lspci -D and bind it to vfio-pci",
                )
        return self.issues

    def kvm(self) -> None:
        kvm = os.path.join(self.host.dev, "kvm")
        try:
            fd = os.open(kvm, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            self.add(
                "host-kvm",
                ("machine",),
                f"{kvm}: {exc.strerror}",
                "load the kvm module and add this user to the kvm group",
            )
        else:
            os.close(fd)

    def sockets(self) -> None:
        """Listening sockets the engine will make: a live one is another process's (the engine
        would refuse it), anything but a socket is in the way. A sandboxed VM's socket folders
        are made by the sandbox (the jail among them): ``sandbox()`` checks where they are."""
        from engine.ownfiles import listener_pid

        sandboxed = self.man.ozone is not None and self.target == "engine"
        paths: list[tuple[Path, str]] = [(("qmp",), q) for q in self.man.qmp]
        paths += [
            (("chardevs", c.id, "path"), c.path)
            for c in self.man.chardevs
            if c.backend is m.ChardevBackend.SOCKET and c.server and c.path
        ]
        serial = self.man.serial
        if serial and serial.backend is m.ChardevBackend.SOCKET and serial.server and serial.path:
            paths.append((("serial", "path"), serial.path))
        for path, sock in paths:
            folder = os.path.dirname(sock) or "."
            if not os.path.isdir(folder):
                if not sandboxed:
                    self.add(
                        "host-socket",
                        path,
                        f"folder {folder} of socket {sock} does not exist",
                        f"mkdir -p {folder}",
                    )
                continue
            try:
                st = os.lstat(sock)
            except OSError:
                continue
            if not stat.S_ISSOCK(st.st_mode) and not (sandboxed and stat.S_ISLNK(st.st_mode)):
                self.add(
                    "host-socket",
                    path,
                    f"{sock} exists and is not a socket; the engine will not replace it",
                    "remove it, or choose another path",
                )
                continue
            try:
                pid = listener_pid(sock)
            except OSError:
                continue
            if pid is None:
                continue
            vm = next((v for v in self.running() if pid in v.pids), None)
            if vm is not None and vm.name == self.man.name:
                continue  # this VM runs: the socket is its own (the warning above says so)
            who = f"process {pid}" if pid else "another process"
            if vm is not None:
                who = f"the running VM {vm.name!r} (pid {pid})"
            self.add(
                "host-socket",
                path,
                f"socket {sock} is in use by {who}",
                "stop that VM ('svlaunch ps' lists VMs), or choose another path",
            )

    def sandbox(self) -> None:
        """The sandbox's own checks (``engine.ozone.spec.build_spec``, the rules the supervisor
        applies at start) on the compiled plan, each placed at the manifest key of the path it
        is about: the VM's uid/gid can read (and write) its files, no socket in a shared
        folder, no pty, the netns, the sources, the runtime; then the jail and cgroups."""
        if self.man.ozone is None or self.target != "engine":
            return
        from launcher.validate.ozone import host_issues

        taken = {i.path for i in self.issues if i.is_error}  # one error per key is enough
        self.issues += [i for i in host_issues(self.man, self.host.is_root) if i.path not in taken]

    def taps(self) -> None:
        from engine.ownfiles import tap_hold

        tun = os.path.join(self.host.dev, "net", "tun")
        netns = self.man.ozone.netns if self.man.ozone is not None else None
        for n in self.man.nets:
            if n.type is not m.NetType.TAP or not n.ifname:
                continue
            held = tap_hold(n.ifname, netns)
            other = next(
                (v for v in self.running() if v.name != self.man.name and held in v.taps), None
            )
            if other is not None:
                self.add(
                    "host-tap",
                    ("nets", n.id, "ifname"),
                    f"tap {n.ifname} belongs to the running VM {other.name!r}",
                    "give each VM its own tap (ifname), or stop that VM",
                )
                continue
            if os.path.exists(os.path.join(self.host.sys, "class/net", n.ifname)):
                continue
            if not os.path.exists(tun):
                self.add(
                    "host-tap",
                    ("nets", n.id, "ifname"),
                    f"tap {n.ifname} does not exist and {tun} is missing",
                    "modprobe tun",
                )
            elif not self.host.is_root:
                self.add(
                    "host-tap",
                    ("nets", n.id, "ifname"),
                    f"tap {n.ifname} does not exist and only root can create it",
                    f"ip tuntap add {n.ifname} mode tap user $USER",
                )

    def hugetlbfs(self) -> None:
        path = self.man.memory.path
        if not path:
            return
        best, fstype = "", ""
        try:
            with open(os.path.join(self.host.proc, "mounts"), encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if (
                        len(parts) >= 3
                        and (path + "/").startswith(parts[1].rstrip("/") + "/")
                        and len(parts[1]) >= len(best)
                    ):
                        best, fstype = parts[1], parts[2]
        except OSError:
            return
        if fstype != "hugetlbfs":
            self.add(
                "host-hugetlbfs",
                ("memory", "path"),
                f"{path} is on {fstype or 'an unknown file system'} ({best or '?'}), not hugetlbfs",
                "mount -t hugetlbfs hugetlbfs /dev/hugepages",
                "warning",
            )

    def numa(self) -> None:
        nodes = os.path.join(self.host.sys, "devices/system/node")
        wanted: list[tuple[Path, int]] = []
        for i, z in enumerate(self.man.memory.zones):
            wanted += [(("memory", "zones", i, "host-nodes"), n) for n in z.host_nodes]
        for i, nd in enumerate(self.man.numa.nodes):
            wanted += [(("numa", "nodes", i, "host-nodes"), n) for n in nd.host_nodes]
        for path, n in wanted:
            if not os.path.isdir(os.path.join(nodes, f"node{n}")):
                have = (
                    sorted(d for d in os.listdir(nodes) if d.startswith("node"))
                    if os.path.isdir(nodes)
                    else []
                )
                self.add(
                    "host-numa",
                    path,
                    f"host NUMA node {n} does not exist",
                    f"this host has: {', '.join(have) or 'no NUMA information'}",
                )

    def vhost(self) -> None:
        for n in self.man.nets:
            if n.vhost and not n.vhostfds:
                dev = os.path.join(self.host.dev, "vhost-net")
                if not os.path.exists(dev):
                    self.add(
                        "host-vhost",
                        ("nets", n.id, "vhost"),
                        f"{dev} is missing",
                        "modprobe vhost_net, or set vhost = false",
                    )
        v = self.man.vsock
        if v is not None and v.vhostfd is None:
            dev = os.path.join(self.host.dev, "vhost-vsock")
            if not os.path.exists(dev):
                self.add("host-vhost", ("vsock",), f"{dev} is missing", "modprobe vhost_vsock")
        if v is not None:
            from engine.ownfiles import vsock_hold

            held = vsock_hold(v.guest_cid)
            other = next(
                (r for r in self.running() if r.name != self.man.name and held in r.vsock), None
            )
            if other is not None:
                self.add(
                    "host-vsock",
                    ("vsock", "guest_cid"),
                    f"vsock guest CID {v.guest_cid} belongs to the running VM {other.name!r}",
                    "give each VM its own guest_cid (3 and up), or stop that VM",
                )


@dataclass(frozen=True)
class _RunningVm:
    name: str
    pids: tuple[int, ...]  # the process svlaunch started first, then the engine inside a sandbox
    taps: frozenset[str]  # its held taps (``engine.ownfiles.tap_hold``)
    vsock: frozenset[str] = frozenset()  # its held guest CID (``engine.ownfiles.vsock_hold``)


def _running_vms() -> list[_RunningVm]:
    from launcher import runtime
    from launcher.errors import SvlaunchError

    try:
        vms = runtime.all_vms(clean=False)
    except SvlaunchError:
        return []  # an untrusted runtime root: 'svlaunch ps' says why
    out = []
    for vm in vms:
        meta, record = vm.meta(), vm.record()
        if meta is None:
            continue
        pids = (meta.pid,) + ((meta.engine_pid,) if meta.engine_pid else ())
        holds = record.holds if record else []
        taps = frozenset(p for p, role in holds if role == "tap")
        vsock = frozenset(p for p, role in holds if role == "vsock")
        out.append(_RunningVm(meta.name, pids, taps, vsock))
    return out


def check_host(
    manifest: m.Manifest, host: Host | None = None, target: str = "engine"
) -> list[Issue]:
    """Every reason this host cannot run ``manifest`` with ``target`` ("engine": svlaunch up;
    "stratovirt": the printed command line) (key paths, no marks)."""
    return _Checks(manifest, host or Host(), target).run()
