"""``import_argv`` accepts what StratoVirt v2.2 accepts and rejects the rest at the argv element.

Baseline-and-break: one valid argv, then each case breaks one thing and asserts the message and
the location (``argv:N:C``: N-th element as given, C-th character in it).
"""

from __future__ import annotations

import pytest

from launcher.compile.stratovirt.importer import import_argv
from launcher.compile.stratovirt.ozone import import_ozone
from launcher.errors import InvalidInput
from launcher.model import Aio, ChardevBackend, MachineType, NetType

BASE = [
    "-machine", "microvm",
    "-kernel", "/boot/vmlinux",
    "-drive", "id=root,file=/img/root.ext4",
    "-device", "virtio-blk-device,id=root,drive=root",
    "-qmp", "unix:/run/vm.qmp,server,nowait",
]  # fmt: skip


def error_of(argv: list[str]) -> tuple[str, str]:
    """(first error message line, its mark) for an argv that must be rejected."""
    with pytest.raises(InvalidInput) as info:
        import_argv(argv)
    issue = next(i for i in info.value.issues if i.is_error)
    return issue.message.splitlines()[0], str(issue.mark)


def test_baseline_imports() -> None:
    m = import_argv(BASE).manifest
    assert m.name == "stratovirt" and m.machine.type is MachineType.MICROVM
    assert m.drives[0].file == "/img/root.ext4" and m.drives[0].attached


@pytest.mark.parametrize(
    ("extra", "message", "mark"),
    [
        (["-smp", "2", "4"], "The argument '-smp' only need one value", "argv:13"),
        (["-daemonize", "on"], "The value 'on' is illegal for argument '-daemonize'", "argv:12"),
        (["-name", "-vm"], "Found argument '-vm' which wasn't expected", "argv:12"),
        (["-m", "1G", "-m", "2G"], "The argument '-m' was provided more than once", "argv:13"),
        (["--smp", "2"], "Found argument '--smp'", "argv:11"),
        (["-pidfile"], "The argument '-pidfile' requires a value", "argv:11"),
        (["-m", "1.5G"], "invalid memory size", "argv:12:1"),
        (["-m", "1T"], "invalid memory size", "argv:12:1"),
        (["-smp", "CPUS=2"], "Invalid parameter 'CPUS' for '-smp'", "argv:12:1"),
        (["-smp", "2,cores=2,cores=1"], "Input field 'cores' in -smp is offered more than once", "argv:12:11"),
        (["-machine", "virt"], "Invalid machine type 'virt'", "argv:2:1"),
        (["-cpu", "host,pmu=yes"], "Invalid PMU option 'yes'", "argv:12:6"),
        (["-serial", "chardev:con0"], 'Chardev "con0" not found or is in use', "argv:12"),
        (["-serial", "stdio,id=x"], "-serial takes no id", "argv:12:7"),
        (["-chardev", "socket,id=c,path=/s,server=on"], "No parameter needed for server", "argv:12:21"),
        (["-chardev", "file,id=c,path=/f,nowait"], "'nowait' is only allowed for a socket chardev", "argv:12:19"),
        (["-global", "pcie-root-port.fast-unplug=on"], "pcie-root-port.fast-unplug must be 0 or 1", "argv:12:1"),
        (["-incoming", "tcp:host:4444"], "Invalid incoming uri", "argv:12:1"),
        (["-trace", "file=/t"], "trace: events file must be set.", "argv:12"),
        (["-object", "memory-backend-file,id=m,size=1G"], "Unknow object type: memory-backend-file", "argv:12:1"),
        (["-object", "memory-backend-ram,id=m,size=1G"], "'host-nodes' is missing", "argv:12"),
        (["-object", "id=x"], "Object type not specified", "argv:12:1"),
        (["-device", "virtio-blk-pci,id=x,drive=root,bus=pcie.0,addr=0x3"], "No pci host found", "argv:12:1"),
        (["-device", "virtio-foo-device"], "Unsupported device: virtio-foo-device", "argv:12:1"),
        (["-device", "virtconsole,id=c0,chardev=x"], "No virtio-serial-bus specified", "argv:12:1"),
        (["-netdev", "type=tap,id=n0"], "Invalid parameter 'type' for '-netdev'", "argv:12:1"),
        (["-netdev", "tap,id=n0"], "Tap device is missing", "argv:12:1"),
        (["-netdev", "tap,id=n0,ifname=t,vhostfd=3"], "Argument 'vhostfd' is not needed", "argv:12:20"),
        (["-drive", "id=d2,file=/d,aio=off"], "Low performance expected", "argv:12:15"),
        (["-drive", "id=d2,file=/d,format=qcow2"], "Only 'raw' format is supported", "argv:12:15"),
        (["-drive", "/img.raw,id=d2"], "Invalid parameter '/img.raw' for '-drive'", "argv:12:1"),
        (["-drive", "id=d2,file=/d,if=scsi"], "Unknow 'if' argument: scsi", "argv:12"),
        (["-drive", "id=root,file=/d2"], "Drive root has been added", "argv:12:1"),
        (["-drive", "id=d2,file=/d,readonly=1"], "invalid value for 'readonly'", "argv:12:15"),
        (["-drive", "id=d2,file=/d,readonly=ON"], "invalid value for 'readonly'", "argv:12:15"),
        (["-device", "virtio-blk-device,id=b2,drive=root"], "No drive configured matched for blk device root", "argv:12:25"),
        (["-device", "virtio-blk-device,id=b2,drive=root,bus=pcie.0"], "No drive configured", "argv:12:25"),
        (["-vnc", "0.0.0.0:0"], "-vnc is not supported by svlaunch manifests", "argv:11"),
        (["-h"], "'-h' makes StratoVirt print its help", "argv:11"),
        (["-qmp", "tcp:1.2.3.4:5,server,nowait"], "The argument '-qmp' was provided more than once", "argv:11"),
    ],
)  # fmt: skip
def test_rejected_with_stratovirt_wording_at_the_element(extra, message, mark) -> None:
    argv = BASE + extra if extra[0] != "-machine" else extra + BASE[2:]
    got, where = error_of(argv)
    assert message in got
    assert where == mark


def test_qmp_rules() -> None:
    no_qmp = BASE[:-2]
    assert (
        error_of([*no_qmp, "-qmp", "tcp:1.2.3.4:5,server,nowait"])[0]
        == "Invalid socket path for qmp"
    )
    msg, where = error_of([*no_qmp, "-qmp", "unix:/run/q,server"])
    assert msg == "Argument 'nowait' is needed for qmp" and where == "argv:10:1"
    msg, _ = error_of([*no_qmp, "-qmp", "unix:/run/a:b,server,nowait"])
    assert msg == "Invalid socket path for qmp"


def test_mmio_keys_and_machine_rules() -> None:
    bad = [*BASE[:6], "-device", "virtio-blk-device,id=root,drive=root,addr=0x3", *BASE[8:]]
    msg, where = error_of(bad)
    assert msg == "virtio mmio device does not support bus arguments" and where == "argv:8:38"
    q35 = ["-machine", "q35", "-drive", "id=d,file=/d", "-device", "virtio-blk-device,id=d,drive=d"]
    assert error_of(q35)[0] == "Virtio mmio devices Not supported!"
    q35 = [
        "-machine",
        "q35",
        "-drive",
        "id=d,file=/d",
        "-device",
        "virtio-blk-pci,drive=d,bus=pcie.0,addr=3",
    ]
    assert error_of(q35)[0] == "Device id is empty"
    q35 = [
        "-machine",
        "q35",
        "-drive",
        "id=d,file=/d",
        "-device",
        "virtio-blk-pci,id=d,drive=d,bus=pcie.1,addr=0",
    ]
    assert error_of(q35)[0] == "Parent bus :pcie.1 not found"


def test_values_are_typed_and_spellings_accepted() -> None:
    argv = [
        "/usr/bin/stratovirt", "-machine", "MicroVM,dump-guest-core=no,mem-share=yes",
        "-smp", "cpus=4,sockets=2", "-m", "1024", "-kernel", "vmlinux",
        "-append", "console=ttyS0", "reboot=k", "-append", "panic=1",
        "-drive", "id=root,file=root.img,direct=off,aio=io_uring,throttling.iops-total=+100",
        "-netdev", "tap,id=n0,fds=3:4,vhost=on,vhostfds=5:6,queues=2",
        "-device", "virtio-blk-device,id=root,drive=root", "virtio-net-device,netdev=n0,mq=on,vectors=9",
        "-chardev", "socket,id=c0,path=/run/c0,server", "-serial", "pty",
        "-qmp", "unix:/run/vm.qmp,server,nowait", "-freeze", "-nodefaults",
    ]  # fmt: skip
    r = import_argv(argv, base_dir="/vm")
    m = r.manifest
    assert m.machine.dump_guest_core is False and m.machine.mem_share is True
    assert (m.cpu.cpus, m.cpu.sockets, m.cpu.cores) == (4, 2, None)
    assert m.memory.size == 1 << 30
    assert m.boot.kernel == "/vm/vmlinux" and m.boot.cmdline == "console=ttyS0 reboot=k panic=1"
    d = m.drives[0]
    assert (d.file, d.direct, d.aio, d.iops) == ("/vm/root.img", False, Aio.IO_URING, 100)
    n = m.nets[0]
    assert (n.type, n.fds, n.vhost, n.vhostfds, n.queues, n.mq) == (
        NetType.TAP,
        (3, 4),
        True,
        (5, 6),
        2,
        True,
    )
    assert m.chardevs[0].server and not m.chardevs[0].nowait
    assert m.serial.backend is ChardevBackend.PTY and m.paused
    warned = " ".join(w.message for w in r.warnings)
    assert "vectors" in warned and "-nodefaults" in warned


def test_numa_on_microvm_is_kept_with_a_warning_and_bad_numa_dropped() -> None:
    argv = [
        *BASE,
        "-object", "memory-backend-ram,id=mem0,size=256M,host-nodes=0,policy=bind",
        "-numa", "node,nodeid=0,cpus=0,memdev=mem0", "-numa", "bogus",
    ]  # fmt: skip
    r = import_argv(argv, validate=False)
    assert [n.id for n in r.manifest.numa.nodes] == [0]
    assert any("ignores -numa" in w.message for w in r.warnings)
    q35 = ["-machine", "q35", "-numa", "bogus"]
    assert error_of(q35)[0] == "Unsupported args for NUMA node"


def test_check_model_issues_are_located_at_the_argv_element() -> None:
    msg, where = error_of([*BASE, "-m", "100"])
    assert "128" in msg and where == "argv:12"


def test_ozone_guidebook_example() -> None:
    argv = [
        "-name",
        "stratovirt_ozone",
        "-exec-file",
        "/path/to/stratovirt",
        "-gid",
        "100",
        "-uid",
        "100",
        "-capability",
        "CAP_CHOWN",
        "-netns",
        "/var/run/netns/mynet",
        "-source",
        "/path/to/vmlinux.bin",
        "/path/to/rootfs",
        "-numa",
        "0",
        "-cgroup",
        "cpuset.cpus=4-5",
        "memory.limit_in_bytes=1000000",
        "--",
        "-kernel",
        "./vmlinux.bin",
        "-append",
        "console=ttyS0",
        "root=/dev/vda",
        "reboot=k",
        "panic=1",
        "rw",
        "-drive",
        "file=./rootfs,id=rootfs,readonly=off",
        "-device",
        "virtio-blk-device,drive=rootfs,id=rootfs",
        "-qmp",
        "unix:./stratovirt.socket,server,nowait",
        "-serial",
        "stdio",
    ]
    m = import_ozone(argv).manifest
    assert m.name == "stratovirt_ozone" and m.ozone.name is None
    assert m.boot.kernel == "/path/to/vmlinux.bin" and m.drives[0].file == "/path/to/rootfs"
    assert m.qmp == ("/srv/ozone/stratovirt/stratovirt_ozone/stratovirt.socket",)
    assert m.ozone.cgroup == (("cpuset.cpus", "4-5"), ("memory.limit_in_bytes", "1000000"))
    assert m.ozone.sources == () and m.ozone.capabilities == ("CAP_CHOWN",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("-name a -uid 1 -gid 1 -- -m 1G", "required arguments were not provided: -exec-file"),
        ("-name a -exec_file /x -uid 1 -gid 1 --", "Found argument '-exec_file'"),
        ("-name a -exec-file /x -uid 70000 -gid 1 --", "uid must be <= 65535"),
        ("-name a -exec-file /x -uid 1 -gid 1 -cgroup cpuset.cpus=1,memory.limit_in_bytes=2 --", "Invalid cgroup argument"),
        ("-name a -exec-file /x -uid 1 -gid 1 -capability CAP_FOO --", "Invalid capability argument: CAP_FOO"),
        ("-name a -exec-file /x -uid 1 -gid 1 -source /a -source /b --", "'-source' was provided more than once"),
        ("-name a -exec-file /x -uid 1 -gid 1 -- -kernel ./vmlinux", "'./vmlinux' is not in the ozone jail"),
    ],
)  # fmt: skip
def test_ozone_rejections(argv: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        import_ozone(argv.split())
    assert message in info.value.issues[0].message


def test_every_broken_option_is_reported_in_one_run_in_argv_order() -> None:
    argv = [
        "-machine", "microvm,foo=1",
        "-kernel", "/boot/vmlinux",
        "-drive", "id=root,file=/img/root.ext4,readonly=maybe",
        "-device", "virtio-blk-device,id=root,drive=root",
        "-qmp", "unix:/run/vm.qmp,server",
    ]  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        import_argv(argv)
    errors = {str(i.mark).split(":")[1]: i.message for i in info.value.issues if i.is_error}
    # the -device at element 8 may also fail as a knock-on of its broken -drive
    assert list(errors) in (["2", "6", "10"], ["2", "6", "8", "10"])
    assert "foo" in errors["2"] and "readonly" in errors["6"] and "nowait" in errors["10"]
