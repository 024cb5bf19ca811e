"""Manifest loading: value syntaxes, marks for TOML and YAML, dumping and round trips."""

from __future__ import annotations

import os

import pytest

from launcher.errors import InvalidInput
from launcher.manifest import dump_manifest, load_manifest, load_text, manifest_to_data
from launcher.manifest.sourcemap import format_path, parse_path
from launcher.manifest.toml_loader import toml_marks
from launcher.manifest.values import (
    format_int_list,
    format_size,
    parse_int_list,
    parse_pci_addr,
    parse_size,
)
from launcher.model import MachineType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
EXAMPLE_FILES = sorted(os.listdir(EXAMPLES))

BASE = """\
name = "vm"
qmp = "/run/vm.qmp"
serial = "stdio"

[memory]
size = "512M"

[boot]
kernel = "vmlinux"
initrd = "initrd.img"
"""


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (512, 512),
        ("512", 512),
        ("4K", 4096),
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("1G", 1 << 30),
        ("2T", 2 << 40),
        ("1536MiB", 1536 << 20),
        ("1 GiB", 1 << 30),
        ("64KB", 64 << 10),
        ("10B", 10),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1.5G", "G", "1X", "-1", "1GG", "", True, 1.0, -5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size_round_trips() -> None:
    for n in (1, 4096, 512 << 20, 3 << 30, (1 << 30) + 1, 5 << 40):
        assert parse_size(format_size(n)) == n
    assert format_size(512 << 20) == "512M"
    assert format_size(1 << 30) == "1G"


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-1,4", (0, 1, 4)),
        ("0-1:4-5", (0, 1, 4, 5)),
        ("[0-3]", (0, 1, 2, 3)),
        ([3, 1], (3, 1)),
        (2, (2,)),
        ("7", (7,)),
    ],
)
def test_int_lists(text: object, cpus: tuple[int, ...]) -> None:
    assert parse_int_list(text) == cpus


@pytest.mark.parametrize("text", ["1-1", "3-1", "a", "0,,1", "", [-1], [True], "0-"])
def test_bad_int_lists(text: object) -> None:
    with pytest.raises(ValueError):
        parse_int_list(text)


def test_format_int_list() -> None:
    assert format_int_list((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert format_int_list((1, 0)) == [1, 0]  # order kept when not sorted


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("0x3", (3, 0)),
        ("3", (3, 0)),
        ("10", (10, 0)),
        ("0x10", (16, 0)),
        ("0x1e.7", (30, 7)),
        ("0x3.0x1", (3, 1)),
        (5, (5, 0)),
    ],
)
def test_pci_addr(text: object, addr: tuple[int, int]) -> None:
    assert parse_pci_addr(text) == addr


@pytest.mark.parametrize("text", ["0x20", "32", "0x3.8", "1.2.3", ".5", "x", "0x3.", True])
def test_bad_pci_addr(text: object) -> None:
    with pytest.raises(ValueError):
        parse_pci_addr(text)


def test_paths_format_and_parse() -> None:
    for path in [
        ("drives", "rootfs", "queue-size"),
        ("numa", "nodes", 1, "cpus"),
        ("root-ports", "pcie.1", "addr"),
        ("ozone", "cgroup", "cpuset.cpus"),
    ]:
        assert parse_path(format_path(path)) == path
    assert format_path(("root-ports", "pcie.1")) == 'root-ports."pcie.1"'


def test_toml_marks_cover_every_form() -> None:
    text = (
        'name = "x"\n'
        "[drives.rootfs]\n"
        'file = "a"  # comment with = sign\n'
        "machine.type = 'q35'\n"
        "[[numa.nodes]]\n"
        "id = 0\n"
        "[[numa.nodes]]\n"
        "id = 1\ncpus = [\n  0,\n  1,\n]\n"
        'ozone = { uid = 1, cgroup = { "cpuset.cpus" = "0" } }\n'
        '[root-ports."pcie.1"]\n'
        'addr = """multi\nline"""\n'
        "port = 3\n"
    )
    m = toml_marks(text, "f")
    assert (
        m.mark(("drives", "rootfs", "file")).line,
        m.mark(("drives", "rootfs", "file")).col,
    ) == (3, 8)
    assert m.mark(("drives", "rootfs", "machine", "type")).line == 4
    assert m.mark(("numa", "nodes", 1, "id")).line == 8
    assert m.mark(("numa", "nodes", 1, "cpus", 1)).line == 11
    assert m.mark(("numa", "nodes", 1, "ozone", "cgroup", "cpuset.cpus")).col == 47
    assert m.mark(("root-ports", "pcie.1", "port")).line == 17
    assert m.mark(("drives", "rootfs")).line == 2


def test_yaml_marks_and_duplicates() -> None:
    text = "name: vm\ndrives:\n  root:\n    file: a\n    queue-size: 100\n    file: b\n"
    manifest, issues = load_text(text, "yaml", "vm.yaml")
    assert manifest is None
    (dup,) = issues
    assert dup.code == "duplicate-key"
    assert (dup.mark.line, dup.mark.col) == (6, 5)
    assert "first at line 4" in dup.message


def test_all_errors_at_once() -> None:
    text = BASE + '[drives.a]\nfile = "a"\nqueue-size = 3\niops = 2000000\n[vsock]\nguest-cid = 1\n'
    manifest, issues = load_text(text, "toml", "/x/vm.toml")
    codes = {i.code for i in issues if i.is_error}
    assert manifest is None
    assert {"queue-size", "drive-iops", "vsock-cid"} <= codes


def test_shape_errors_stop_before_rules_but_are_all_reported() -> None:
    text = BASE + "[cpu]\ncpus = 'two'\nmodle = 'host'\n"
    _, issues = load_text(text, "toml", "/x/vm.toml")
    assert sorted(i.code for i in issues) == ["unknown-key", "wrong-type"]
    unknown = next(i for i in issues if i.code == "unknown-key")
    assert unknown.hint == "did you mean 'model'?"
    assert (unknown.mark.line, unknown.mark.col) == (13, 1)


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(BASE + '[drives.root]\nfile = "../img/root.raw"\n')
    man = load_manifest(str(path))
    assert man.boot.kernel == str(tmp_path / "vmlinux")
    assert man.drives[0].file == os.path.normpath(str(tmp_path / "../img/root.raw"))
    assert man.machine.type is MachineType.MICROVM


def test_load_manifest_raises_with_every_issue(tmp_path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(BASE.replace('size = "512M"', 'size = "64M"') + "[vsock]\nguest-cid = 2\n")
    with pytest.raises(InvalidInput) as exc:
        load_manifest(str(path))
    assert {i.code for i in exc.value.issues} >= {"memory-size-range", "vsock-cid"}


def test_warnings_are_returned_not_raised(tmp_path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(BASE.replace('qmp = "/run/vm.qmp"\n', ""))
    warnings: list = []
    man = load_manifest(str(path), warnings=warnings)
    assert man.name == "vm"
    assert [w.code for w in warnings] == ["qmp-missing"]
    with pytest.raises(InvalidInput):
        load_manifest(str(path), target="stratovirt")


def test_unreadable_and_unknown_files(tmp_path) -> None:
    with pytest.raises(InvalidInput) as exc:
        load_manifest(str(tmp_path / "missing.toml"))
    assert exc.value.issues[0].code == "file-unreadable"
    (tmp_path / "vm.json").write_text("{}")
    with pytest.raises(InvalidInput) as exc:
        load_manifest(str(tmp_path / "vm.json"))
    assert exc.value.issues[0].code == "unknown-format"
    (tmp_path / "bin.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(InvalidInput) as exc:
        load_manifest(str(tmp_path / "bin.toml"))
    assert exc.value.issues[0].code == "file-unreadable"


@pytest.mark.parametrize("name", EXAMPLE_FILES)
@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_examples_round_trip(name: str, fmt: str, tmp_path) -> None:
    man = load_manifest(os.path.join(EXAMPLES, name))
    text = dump_manifest(man, fmt)
    out = tmp_path / f"again.{fmt}"
    out.write_text(text)
    again, issues = load_text(text, fmt, str(out), base_dir=man.base_dir)
    assert again == man, issues


def test_dump_is_minimal_and_relative() -> None:
    man = load_manifest(os.path.join(EXAMPLES, "quickstart.toml"))
    data = manifest_to_data(man)
    assert data["boot"]["kernel"] == "../build/guest/vmlinux"
    assert data["memory"] == {"size": "512M"}
    assert data["machine"] == {} if "machine" in data else True
    assert "seccomp" not in data and "arch" not in data
    assert list(data)[:2] == ["name", "qmp"]


SKETCH = """\
# svlaunch manifest: the agreed key structure (TOML; YAML has the same tree). Keys map 1:1 to
# launcher/model.py fields with '-' -> '_'. Comments name the StratoVirt option each key compiles to.
name = "web-1"                 # required; -name
arch = "x86_64"                # x86_64 (default) | aarch64
seccomp = true                 # false -> -disable-seccomp
paused = false                 # true -> -S
# incoming = "file:/var/lib/tmpl/web"   # -incoming: restores a snapshot; not with the balloon
#                                       # and hugepages below (snapshot-unsupported)
daemonize = true               # -daemonize
pidfile = "/run/web-1.pid"     # -pidfile (requires daemonize)
trace = "trace-events.txt"     # -trace events=<file>
iothreads = ["io0", "io1"]     # -object iothread,id=...
qmp = "/run/web-1.qmp"         # string or list of strings: -qmp unix:<path>,server,nowait

[machine]                      # -machine
type = "microvm"               # microvm (default) | q35 | virt (aarch64) | none
dump-guest-core = true
mem-share = false
accel = "kvm"                  # kvm | kvm:tcg | tcg
usb = false
# gic-version = 3              # aarch64 only

[cpu]                          # -smp, -cpu
cpus = 4
maxcpus = 4
sockets = 2
dies = 1
clusters = 1
cores = 2
threads = 1
model = "host"                 # -cpu host
pmu = false                    # -cpu ...,pmu=off

[memory]                       # -m, -mem-path, -mem-prealloc
size = "1G"                    # "512M", "1G", "2T", "1536MiB" or an integer number of BYTES
path = "/dev/hugepages"
prealloc = false
# [[memory.zones]]             # node-less -object memory-backend-ram (rare; NUMA nodes declare their own)
# id = "mem9"  size = "512M"  host-nodes = [0]  policy = "bind"

[[numa.nodes]]                 # -object memory-backend-ram,... + -numa node,...
id = 0                         # nodeid
cpus = [0, 1]                  # list of ints or "0-1" / "0-1,4" strings
size = "512M"
host-nodes = [0]
policy = "bind"                # default | preferred | bind | interleave
# memdev = "mem0"              # object id, default "mem<id>"
[[numa.nodes]]
id = 1
cpus = "2-3"
size = "512M"
host-nodes = [0]
policy = "bind"
[[numa.distances]]             # -numa dist,src=,dst=,val=
src = 0
dst = 1
val = 20

[boot]
kernel = "vmlinux"             # -kernel (relative to the manifest's folder)
initrd = "initrd.img"          # -initrd
cmdline = "console=ttyS0 reboot=k panic=1"   # -append; string or list of strings

[global.pcie-root-port]        # -global pcie-root-port.fast-unplug=0|1
fast-unplug = true

[log]                          # -D [file]; no file = stdout
file = "/var/log/web-1.log"

[drives.rootfs]                # -drive id=rootfs,... + -device virtio-blk-*,drive=rootfs,id=rootfs
file = "rootfs.ext4"
readonly = false
direct = true
aio = "native"                 # native | io_uring | off
format = "raw"
iops = 1000                    # throttling.iops-total
serial = "root"
iothread = "io0"
queues = 1                     # num-queues
queue-size = 256
bootindex = 1
# attached = false             # backend only, no -device
# device-id = "blk0"           # device id if it must differ from the drive id
# transport = "pci"            # mmio | pci; default: mmio on microvm, pci on q35/virt
# bus = "pcie.0"               # PCI placement (pci transport only)
# addr = "0x3"                 # SLOT or SLOT.FUNC
# multifunction = false

[nets.net0]                    # -netdev tap,id=net0,... + -device virtio-net-*,netdev=net0,id=net0
type = "tap"                   # tap | vhost-user
ifname = "tap0"
# fds = [3]                    # fd= / fds=
vhost = false
# vhostfds = [4]
queues = 1                     # queue pairs
# chardev = "vu0"              # vhost-user socket chardev
mac = "52:54:00:12:34:56"
mq = false
iothread = "io1"
queue-size = 256

[chardevs.con0]                # -chardev socket,id=con0,path=...,server,nowait
backend = "socket"             # stdio | pty | socket | file
path = "/run/web-1.con"
server = true
nowait = true

[serial]                       # -serial <inline backend>; shorthand: serial = "stdio" | "pty"
backend = "file"
path = "/var/log/web-1.serial"

[virtio-serial]                # optional: implied by consoles; id/transport/PCI placement
id = "vser0"

[consoles.console0]            # -device virtconsole,id=console0,chardev=con0
chardev = "con0"

[vsock]                        # -device vhost-vsock-*,id=vsock0,guest-cid=3
id = "vsock0"
guest-cid = 3
# vhostfd = 5

[balloon]                      # -device virtio-balloon-*
id = "balloon0"
deflate-on-oom = true
free-page-reporting = false

[rngs.rng0]                    # -object rng-random,id=rng0,filename=... + -device virtio-rng-*,rng=rng0
file = "/dev/urandom"
max-bytes = 1000000
period = 1000                  # ms
# device-id = "rng-dev0"

# q35 / virt only:
# [root-ports.pcie.1]  port = 1  bus = "pcie.0"  addr = "0x5"  chassis = 1  multifunction = false
# [[pflash]]  unit = 0  file = "OVMF_CODE.fd"  readonly = true
# [vfio.net1]  host = "0000:1a:00.3"  bus = "pcie.0"  addr = "0x6"
# [usb.xhci]  id = "xhci"  bus = "pcie.0"  addr = "0x7"  p2 = 4  p3 = 4
# [usb.keyboard]  id = "kbd"
# [usb.tablet]  id = "tablet"
# [[monitors]]  chardev = "mon0"  id = "mon0"       # -mon chardev=mon0,id=mon0,mode=control

[ozone]                        # run inside the ozone sandbox
exec-file = "/usr/bin/stratovirt"
uid = 1000
gid = 1000
# name = "web-1"               # default: the VM name
capabilities = ["CAP_NET_ADMIN"]
netns = "/var/run/netns/web"
sources = ["extra.bin"]        # -source
numa = "0"                     # -numa (cpuset.mems)
cgroup = { "cpuset.cpus" = "0-3", "memory.limit_in_bytes" = "1073741824" }
clean-resource = false
root = "/srv/ozone"            # jail base folder (svlaunch extension)
"""


def test_agreed_key_tree_loads_and_round_trips(tmp_path) -> None:
    """The agreed key structure (every key of the design sketch) loads and dumps back."""
    path = tmp_path / "sketch.toml"
    path.write_text(SKETCH)
    warnings: list = []
    man = load_manifest(str(path), warnings=warnings)
    assert all(not w.is_error for w in warnings)
    assert man.drives[0].iops == 1000 and man.nets[0].mac == "52:54:00:12:34:56"
    assert man.ozone is not None and dict(man.ozone.cgroup)["cpuset.cpus"] == "0-3"
    again, issues = load_text(dump_manifest(man), "toml", str(path))
    assert again == man, issues
