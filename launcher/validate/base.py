"""The rule catalogue and the context every rule module writes its issues into.

``RULES`` is the one list of rule codes: each check cites a code from it, the table in
``docs/validation.md`` is generated from it (``rules_markdown``), and a test fails if a code is
used but not listed (or the reverse).
"""

from __future__ import annotations

from engine.device_rules import MAX_IFNAME, MAX_SERIAL
from engine.machine.layout import CMDLINE_MAX_SIZE
from launcher import model as m
from launcher.errors import Issue
from launcher.manifest.sourcemap import Path, format_path

#: a range rule's text: the range itself is the key's declared limits (docs/manifest.md)
LIMITS = "{} is outside the limits the key declares (docs/manifest.md)."

# code -> (area, what the rule says). Severity is per issue (a few rules warn).
RULES: dict[str, tuple[str, str]] = {
    # loading and shape (launcher.manifest)
    "toml-syntax": ("syntax", "The file is not valid TOML."),
    "yaml-syntax": ("syntax", "The file is not valid YAML (or expands too much through aliases)."),
    "duplicate-key": ("syntax", "A YAML key appears twice in one mapping."),
    "key-type": ("syntax", "A YAML key is not a string."),
    "file-unreadable": ("syntax", "The manifest cannot be read or is not UTF-8 text."),
    "unknown-format": ("syntax", "The file name does not end in .toml, .yaml or .yml."),
    "too-deep": ("syntax", "Tables and arrays nested more than 64 levels."),
    "number-range": ("syntax", "A number outside 64 bits (or longer than int() converts)."),
    "control-character": (
        "syntax",
        "A key or string holds a NUL, control character or bidi override (tab, newline allowed).",
    ),
    "path-not-utf8": ("values", "A relative path lies under a folder whose name is not UTF-8."),
    "not-a-table": ("shape", "The document is not a table/mapping."),
    "unknown-key": ("shape", "A key the schema does not know (with a did-you-mean)."),
    "missing-key": ("shape", "A required key is absent."),
    "wrong-type": ("shape", "A value has the wrong type."),
    "bad-value": ("shape", "A value is not one of the allowed words (with a did-you-mean)."),
    "bad-syntax": ("shape", "A string does not follow its syntax (size, cpu list, PCI addr)."),
    "empty-value": ("shape", "A string or id is empty."),
    "range": ("shape", "A number is negative where only non-negative numbers make sense."),
    "schema": ("shape", "Any other schema violation."),
    "size-syntax": ("values", "A size is not bytes or a number with a K/M/G/T suffix."),
    "int-list-syntax": ("values", "A cpu or host-node list is malformed (ranges need A < B)."),
    "pci-addr-syntax": ("values", "A PCI addr is not SLOT or SLOT.FUNC, slot 0-31, function 0-7."),
    "pci-addr-required": ("pci", "A PCI device (or bus/multifunction) without an addr."),
    "vm-name-duplicate": ("run", "Two manifests in one validate run use the same VM name."),
    "internal-error": ("run", "svlaunch itself failed on the file (a bug: exit code 3)."),
    # general
    "vm-name": (
        "limits",
        "A VM name is 1-64 characters from A-Z a-z 0-9 _ . + -, starting with a letter or digit.",
    ),
    "string-too-long": ("limits", "Names and ids at most 255 bytes, paths at most 4096."),
    "comma-in-value": ("limits", "A value that lands in a StratoVirt property list contains ','."),
    "leading-dash": ("limits", "A value that is its own argv element starts with '-'."),
    "socket-path": ("limits", "A unix socket path is longer than 107 bytes or contains ':'."),
    "qmp-missing": ("control", "No qmp socket and no monitor (StratoVirt requires one)."),
    "monitor-chardev": ("control", "A monitor's chardev must be a socket with server and nowait."),
    "pidfile-needs-daemonize": ("control", "pidfile is only allowed with daemonize."),
    "daemonize-stdio": ("control", "daemonize cannot be combined with a stdio serial or chardev."),
    "stdio-multiple": ("control", "At most one device may use stdio."),
    "incoming-uri": ("control", "incoming must be file:PATH, unix:PATH or tcp:IPV4:PORT."),
    "snapshot-unsupported": (
        "snapshot",
        "A restoring manifest (incoming) cannot have a balloon, vhost-net, VFIO, hugepage or "
        "file-backed memory, or shared memory (StratoVirt's limits).",
    ),
    "iothread-limit": ("control", "At most 8 iothreads."),
    "iothread-duplicate": ("control", "An iothread id is declared twice."),
    "iothread-unknown": ("references", "A device names an iothread that is not declared."),
    "iothread-unused": ("references", "A declared iothread is used by no device (warning)."),
    # machine
    "machine-arch": ("machine", "q35 exists only on x86_64, virt only on aarch64."),
    "machine-usb": ("machine", "machine.usb can only be false in StratoVirt."),
    "gic-version": ("machine", "gic-version is aarch64-only and must be 3."),
    "machine-none-devices": ("machine", "Machine type none realizes no devices (warning)."),
    "kernel-required": ("boot", "microvm needs boot.kernel."),
    "rootfs-required": (
        "boot",
        "A VM needs an initrd, a drive or a chardev as its root file system.",
    ),
    "kernel-cmdline-too-long": (
        "boot",
        f"The kernel command line is longer than {CMDLINE_MAX_SIZE - 1} bytes"
        f" ({CMDLINE_MAX_SIZE} with its NUL).",
    ),
    "kernel-param-too-long": ("boot", "A kernel parameter value is longer than 255 bytes."),
    "kernel-param-truncated": (
        "boot",
        "A kernel parameter with two '=' is truncated by StratoVirt (warning).",
    ),
    "initrd-path-too-long": ("boot", "The initrd path is longer than 255 bytes."),
    "standard-vm-only": ("machine", "pflash, root ports, VFIO and USB need q35 or virt."),
    "pflash-required": ("boot", "q35 needs a pflash unit 0 (firmware), even for kernel boot."),
    "pflash-unit": ("boot", "pflash unit must be 0 or 1, each at most once."),
    "pflash-readonly": ("boot", "pflash unit 0 (firmware code) should be read-only (warning)."),
    "fast-unplug-microvm": ("machine", "global.pcie-root-port has no effect on microvm (warning)."),
    # cpu
    "cpu-topology": ("cpu", "StratoVirt's -smp rules: ranges 1-254 and the topology product."),
    "cpu-pmu": ("cpu", "pmu only has an effect on aarch64 (warning)."),
    "cpu-sockets-aarch64-microvm": ("cpu", "An aarch64 microvm should have one socket (warning)."),
    # memory and NUMA
    "memory-size-range": ("memory", "Guest memory must be 128 MiB to 512 GiB."),
    "memory-size-unit": ("memory", "Sizes StratoVirt receives must be whole MiB."),
    "memory-zone-duplicate": ("memory", "A memory object id is used twice."),
    "host-node-range": ("numa", "Host NUMA node ids are below 128."),
    "numa-microvm": (
        "numa",
        "StratoVirt v2.2 ignores -numa on microvm; the engine honours it (warning).",
    ),
    "numa-node-limit": ("numa", "At most 8 NUMA nodes."),
    "numa-node-id": ("numa", "Node ids are below 128 and unique."),
    "numa-cpu-duplicate": ("numa", "A vCPU belongs to one node, once."),
    "numa-cpu-range": ("numa", "Node cpus must be below cpu.cpus."),
    "numa-cpus-uncovered": ("numa", "vCPUs in no node go to node 0 (warning)."),
    "numa-memory-sum": ("numa", "Node sizes must add up to memory.size exactly."),
    "numa-distance": (
        "numa",
        "Distances: declared nodes, 10 to itself, 11-255 to others, once per pair.",
    ),
    # devices
    "device-id-duplicate": (
        "devices",
        "Device ids must be unique (all PCI devices; blk/net on microvm).",
    ),
    "device-id-required": ("devices", "Every device on a standard VM needs an id."),
    "transport-machine": ("devices", "mmio devices on microvm only, pci devices on q35/virt only."),
    "pci-on-mmio": ("pci", "bus/addr/multifunction only apply to the pci transport."),
    "pci-slot-reserved": ("pci", "Slot 0 (and 0x1f on q35) of pcie.0 are taken by the chipset."),
    "pci-devfn-duplicate": ("pci", "Two devices at the same bus, slot and function."),
    "pci-multifunction": ("pci", "Other functions in a slot need multifunction on function 0."),
    "pci-bus-unknown": ("pci", "bus must be pcie.0 or a root port declared earlier."),
    "pci-root-port-slot": ("pci", "Devices behind a root port must use slot 0."),
    "root-port-range": ("pci", LIMITS.format("Root port port and chassis")),
    "microvm-blk-limit": ("limits", "microvm has 4 block slots."),
    "microvm-net-limit": ("limits", "microvm has 2 net slots (non-vhost)."),
    "microvm-irq-limit": ("limits", "microvm's IRQ pool: 5 extra virtio-mmio devices on x86_64."),
    "drive-format": ("blk", "Only raw images in StratoVirt v2.2.0."),
    "drive-aio": ("blk", "aio=native needs direct; direct with aio=off is rejected."),
    "drive-iops": ("blk", LIMITS.format("A drive's iops")),
    "drive-discard": (
        "blk",
        "discard = unmap needs StratoVirt >= 2.3 (warning, --target stratovirt).",
    ),
    "drive-serial": ("blk", f"serial at most {MAX_SERIAL} bytes."),
    "drive-queues": ("blk", LIMITS.format("A drive's queues")),
    "queue-size": ("virtio", LIMITS.format("A drive's or NIC's queue-size")),
    "bootindex": ("blk", LIMITS.format("bootindex") + " Unique among attached drives."),
    "drive-shared": ("blk", "One image file backs several drives only if all are read-only."),
    "drive-detached": (
        "blk",
        "Device keys on a drive with attached = false are ignored (warning).",
    ),
    "net-backend": ("net", "tap needs ifname or fds; vhost-user needs a chardev and no vhost."),
    "net-queues": (
        "net",
        LIMITS.format("A NIC's queues (pairs)") + " At most 16 fds; vhostfds need vhost.",
    ),
    "net-mac": ("net", "mac is six hex pairs separated by ':'; unique (warning)."),
    "net-ifname": ("net", f"A tap name is at most {MAX_IFNAME} bytes (Linux IFNAMSIZ)."),
    "net-vhost-user-mmio": ("net", "vhost-user works only with virtio-net-pci."),
    "vhost-user-shared-memory": (
        "net",
        "vhost-user needs machine.mem-share and memory.path (warning).",
    ),
    "chardev-unknown": ("references", "A chardev reference that names no chardev."),
    "chardev-consumed": ("references", "A chardev used by two consumers (each is consumed)."),
    "chardev-options": ("chardev", "socket/file need a path; server/nowait are socket-only."),
    "vhost-user-chardev": (
        "chardev",
        "A vhost-user chardev is a client socket (no server/nowait).",
    ),
    "console-limit": ("devices", "Standard VMs fit one virtconsole."),
    "vsock-cid": ("devices", LIMITS.format("vsock's guest-cid")),
    "rng-rate": ("devices", "max-bytes and period together; 64 <= max-bytes*1000/period <= 1e9."),
    "balloon-vfio": ("devices", "Avoid a balloon together with VFIO (warning)."),
    "vfio-host": ("devices", "Exactly one of host (DDDD:BB:DD.F) or sysfsdev."),
    "usb-ports": ("devices", LIMITS.format("xhci p2/p3")),
    "usb-needs-xhci": ("devices", "A USB keyboard or tablet needs usb.xhci."),
    "pvpanic-stratovirt": (
        "devices",
        "StratoVirt v2.2 has no pvpanic device: builtin engine only (--target stratovirt).",
    ),
    # ozone
    "ozone-id-range": ("ozone", "uid and gid at most 65535."),
    "ozone-capability": ("ozone", "Capability names are CAP_* names the kernel knows."),
    "ozone-cgroup-key": ("ozone", "Only cgroup keys cpuset.cpus and memory.limit_in_bytes."),
    "ozone-cgroup": ("ozone", "cgroup values are non-empty, without '=' or spaces."),
    "ozone-numa": ("ozone", "cpuset.cpus should come with ozone.numa (warning)."),
    "ozone-name": ("ozone", "The sandbox name is a path component: no '/', at most 255 bytes."),
    # svlaunch's own keys (hosts, depends-on, the balloon target)
    "hosts-entry": (
        "placement",
        "A hosts entry is a host name (dot-separated labels), listed once.",
    ),
    "depends-on": ("placement", "depends-on names other VMs, each once."),
    "balloon-target": (
        "placement",
        "balloon.target is at most memory.size (set over QMP: StratoVirt's argv has no option).",
    ),
    # across manifests, per host (svlaunch validate DIR, diff, apply)
    "cross-duplicate": (
        "run",
        "Two VMs on one host share a MAC, vsock CID, tap, socket path or writable disk.",
    ),
    "cross-depends-on": (
        "run",
        "depends-on names a VM that does not run on the same host, or a cycle.",
    ),
    "inventory": (
        "run",
        "The host inventory: unknown hosts, over-committed vCPUs or memory (warnings).",
    ),
    # host (svlaunch check)
    "host-file": ("host", "A file the VM needs is missing or unreadable."),
    "host-kvm": ("host", "/dev/kvm is missing or cannot be opened."),
    "host-tap": (
        "host",
        "A tap device is missing and cannot be created, or a running VM holds it.",
    ),
    "host-vsock": ("host", "The vsock guest CID is held by another running VM."),
    "host-hugetlbfs": ("host", "memory.path is not on a hugetlbfs mount (warning)."),
    "host-numa": ("host", "A host NUMA node named by the manifest does not exist."),
    "host-vhost": ("host", "A vhost device (/dev/vhost-net, /dev/vhost-vsock) is missing."),
    "host-socket": (
        "host",
        "A socket path's folder is missing, or something live or not a socket is there (the "
        "VM's own engine, when it runs, is no conflict).",
    ),
    "host-running": (
        "host",
        "The VM of this manifest's name runs; its own sockets and taps are in use (warning).",
    ),
    "host-snapshot": ("host", "The snapshot incoming names is missing, truncated or corrupted."),
    "host-snapshot-mismatch": (
        "host",
        "A restoring manifest changes what the snapshot's guest depends on: memory, vCPUs, "
        "devices and their order, kinds and queues.",
    ),
    "host-sandbox": (
        "host",
        "The sandbox would refuse it at start: a file its uid cannot use, a socket in a shared "
        "folder, a pty, the jail or a cgroup already there, not root.",
    ),
}


def rules_markdown() -> str:
    """The rule table of ``docs/validation.md``."""
    rows = ["| code | area | rule |", "|---|---|---|"]
    rows += [f"| `{code}` | {area} | {text} |" for code, (area, text) in RULES.items()]
    return "\n".join(rows) + "\n"


class Context:
    """What every rule needs: the manifest, the target, and the issue list it appends to.

    A plain class, not a dataclass: one is made per check and nothing compares or prints it,
    so the generated methods were only start-up cost.
    """

    __slots__ = ("issues", "manifest", "target")

    def __init__(
        self, manifest: m.Manifest, target: str = "engine", issues: list[Issue] | None = None
    ) -> None:
        self.manifest = manifest
        self.target = target  # "engine" | "stratovirt"
        self.issues: list[Issue] = [] if issues is None else issues

    @property
    def standard(self) -> bool:
        return self.manifest.machine.type.is_standard

    @property
    def microvm(self) -> bool:
        return self.manifest.machine.type is m.MachineType.MICROVM

    def add(
        self, code: str, path: Path | str, message: str, hint: str = "", severity: str = "error"
    ) -> None:
        assert code in RULES, code
        where = path if isinstance(path, str) else format_path(path)
        self.issues.append(Issue(message, where, hint, None, severity, code))

    def warn(self, code: str, path: Path | str, message: str, hint: str = "") -> None:
        self.add(code, path, message, hint, "warning")

    def default_transport(self) -> m.Transport:
        return m.Transport.PCI if self.standard else m.Transport.MMIO
