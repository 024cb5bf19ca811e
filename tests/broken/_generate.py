"""Writes the broken-manifest corpus: one file per case, expectation in the first line.

Each case is a manifest text with ``@@`` where the error must point, the rule code and the key
path. Run ``python tests/broken/_generate.py`` after editing; the files are committed so the
corpus can be read (and extended by hand) without this script.
"""

from __future__ import annotations

import os
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

MV = """\
name = "vm"
qmp = "/run/vm.qmp"
serial = "pty"
{top}
[cpu]
cpus = 2

[memory]
size = "512M"

[boot]
kernel = "vmlinux"
initrd = "initrd.img"
cmdline = "console=ttyS0"
{extra}"""

Q35 = """\
name = "std"
qmp = "/run/std.qmp"
{top}
[machine]
type = "q35"

[cpu]
cpus = 2

[memory]
size = "1G"

[boot]
kernel = "vmlinuz"
initrd = "initrd.img"

[[pflash]]
unit = 0
file = "OVMF_CODE.fd"
readonly = true
{extra}"""

YMV = """\
name: vm
qmp: /run/vm.qmp
serial: pty
cpu:
  cpus: 2
memory:
  size: 512M
boot:
  kernel: vmlinux
  initrd: initrd.img
{extra}"""


def mv(extra: str = "", top: str = "") -> str:
    return MV.format(extra=textwrap.dedent(extra), top=textwrap.dedent(top))


def q35(extra: str = "", top: str = "") -> str:
    return Q35.format(extra=textwrap.dedent(extra), top=textwrap.dedent(top))


def ymv(extra: str = "") -> str:
    return YMV.format(extra=textwrap.dedent(extra))


# (file name, text with @@ at the expected mark, code, key path or "-")
CASES: list[tuple[str, str, str, str]] = [
    # -- syntax ------------------------------------------------------------------------------
    ("syntax-unquoted-string.toml", "name = @@vm\n", "toml-syntax", "-"),
    ("syntax-missing-value.toml", 'name = "vm"\nqmp =@@\n', "toml-syntax", "-"),
    ("syntax-unclosed-table.toml", 'name = "vm"\n[cpu@@\ncpus = 2\n', "toml-syntax", "-"),
    ("syntax-duplicate-key.toml", 'name = "vm"\nname = "b"@@\n', "toml-syntax", "-"),
    ("syntax-duplicate-table.toml", mv("[cpu@@]\ncpus = 4\n"), "toml-syntax", "-"),
    ("syntax-unclosed-string.toml", 'name = "vm@@\n', "toml-syntax", "-"),
    ("syntax-bad-array.toml", 'name = "vm"\niothreads = ["a" @@"b"]\n', "toml-syntax", "-"),
    ("syntax-yaml-tab.yaml", "name: vm\ncpu:\n@@\tcpus: 2\n", "yaml-syntax", "-"),
    ("syntax-yaml-unclosed.yaml", 'name: "vm\n@@', "yaml-syntax", "-"),
    ("syntax-yaml-unclosed-flow.yaml", "name: vm\ncpu: {cpus: 2\n@@", "yaml-syntax", "-"),
    (
        "syntax-yaml-duplicate.yaml",
        "name: vm\ncpu:\n  cpus: 2\n  @@cpus: 3\n",
        "duplicate-key",
        "cpu.cpus",
    ),
    ("syntax-yaml-duplicate-top.yaml", ymv("@@name: other\n"), "duplicate-key", "name"),
    # what any value may be (launcher/manifest/plain.py)
    (
        "plain-deep-array.toml",
        "name = 'vm'\nx = " + "[" * 64 + "@@" + "[" * 40 + "]" * 104 + "\n",
        "too-deep",
        "-",
    ),
    (
        "plain-deep-recursion.toml",
        "name = 'vm'\nx = " + "[" * 64 + "@@" + "[" * 600 + "]" * 664 + "\n",
        "too-deep",
        "-",
    ),
    (
        "plain-deep-inline.toml",
        "name = 'vm'\nx = " + "{a=" * 64 + "@@" + "{a=" * 40 + "1" + "}" * 104 + "\n",
        "too-deep",
        "-",
    ),
    (
        "plain-deep.yaml",
        "name: vm\nx: " + "[" * 64 + "@@" + "[" * 40 + "]" * 104 + "\n",
        "too-deep",
        "-",
    ),
    ("plain-long-number.toml", mv(top="memory-zones = @@" + "9" * 5000), "number-range", "-"),
    ("plain-long-number.yaml", ymv("x: @@" + "9" * 5000 + "\n"), "number-range", "-"),
    ("plain-huge-hex.toml", mv(top="x = @@0x" + "f" * 17), "number-range", "x"),
    ("plain-huge-hex.yaml", ymv("x: @@0x" + "f" * 2000 + "\n"), "number-range", "x"),
    (
        "plain-nul-path.toml",
        mv(top='qmp = @@"/run/vm\\u0000.qmp"').replace('qmp = "/run/vm.qmp"\n', ""),
        "control-character",
        "qmp",
    ),
    ("plain-escape-value.yaml", ymv('cpu_model: @@"\\e[2J"\n'), "control-character", "cpu_model"),
    ("plain-escape-key.toml", mv(top='@@"\\u001b[31mkey" = 1'), "control-character", "-"),
    ("syntax-yaml-list.yaml", "@@- name: vm\n", "not-a-table", "-"),
    ("syntax-toml-empty.toml", "# only a comment\n@@[cpu]\ncpus = 2\n", "missing-key", ""),
    # -- shape -------------------------------------------------------------------------------
    ("shape-unknown-top.toml", mv(top="@@hugepages = true\n"), "unknown-key", "hugepages"),
    ("shape-unknown-cpu.toml", mv('[machine]\n@@typ = "microvm"\n'), "unknown-key", "machine.typ"),
    (
        "shape-unknown-drive-key.toml",
        mv('[drives.root]\nfile = "r.img"\n@@queue_size = 128\n'),
        "unknown-key",
        "drives.root.queue_size",
    ),
    (
        "shape-unknown-net-key.toml",
        mv('[nets.n0]\nifname = "tap0"\n@@macaddr = "x"\n'),
        "unknown-key",
        "nets.n0.macaddr",
    ),
    ("shape-unknown-section.toml", mv('@@[disks.root]\nfile = "r"\n'), "unknown-key", "disks"),
    ("shape-missing-name.toml", '@@qmp = "/run/x.qmp"\n', "missing-key", ""),
    (
        "shape-missing-drive-file.toml",
        mv("@@[drives.root]\nreadonly = true\n"),
        "missing-key",
        "drives.root",
    ),
    (
        "shape-missing-ozone-uid.toml",
        mv('@@[ozone]\nexec-file = "/usr/bin/stratovirt"\ngid = 1\n'),
        "missing-key",
        "ozone",
    ),
    ("shape-missing-vsock-cid.toml", mv('@@[vsock]\nid = "v"\n'), "missing-key", "vsock"),
    (
        "shape-cpus-string.toml",
        mv(top="").replace("cpus = 2", 'cpus = @@"2"'),
        "wrong-type",
        "cpu.cpus",
    ),
    (
        "shape-name-int.toml",
        "@@name = 5\n".replace("@@name = 5", "name = @@5"),
        "wrong-type",
        "name",
    ),
    ("shape-daemonize-string.toml", mv(top='daemonize = @@"yes"\n'), "wrong-type", "daemonize"),
    (
        "shape-readonly-string.toml",
        mv('[drives.root]\nfile = "r"\nreadonly = @@"on"\n'),
        "wrong-type",
        "drives.root.readonly",
    ),
    (
        "shape-float-size.toml",
        mv().replace('size = "512M"', "size = @@1.5"),
        "wrong-type",
        "memory.size",
    ),
    ("shape-negative-cpus.toml", mv().replace("cpus = 2", "cpus = @@-1"), "range", "cpu.cpus"),
    (
        "shape-bad-machine-type.toml",
        mv('[machine]\ntype = @@"microvn"\n'),
        "bad-value",
        "machine.type",
    ),
    ("shape-bad-arch.toml", mv(top='arch = @@"arm64"\n'), "bad-value", "arch"),
    (
        "shape-bad-aio.toml",
        mv('[drives.root]\nfile = "r"\naio = @@"threads"\n'),
        "bad-value",
        "drives.root.aio",
    ),
    ("shape-bad-net-type.toml", mv('[nets.n0]\ntype = @@"user"\n'), "bad-value", "nets.n0.type"),
    (
        "shape-bad-chardev-backend.toml",
        mv('[chardevs.c0]\nbackend = @@"tcp"\n'),
        "bad-value",
        "chardevs.c0.backend",
    ),
    (
        "shape-bad-serial.toml",
        mv().replace('serial = "pty"', 'serial = @@"ttyS0"'),
        "wrong-type",
        "serial",
    ),
    (
        "shape-bad-policy.toml",
        mv('[[memory.zones]]\nid = "z"\nsize = "128M"\npolicy = @@"strict"\n'),
        "bad-value",
        "memory.zones[0].policy",
    ),
    (
        "shape-bad-size-syntax.toml",
        mv().replace('size = "512M"', 'size = @@"512 megs"'),
        "bad-syntax",
        "memory.size",
    ),
    (
        "shape-bad-cpulist.toml",
        q35('[[numa.nodes]]\nid = 0\ncpus = @@"0..1"\nsize = "1G"\n'),
        "bad-syntax",
        "numa.nodes[0].cpus",
    ),
    (
        "shape-bad-addr.toml",
        q35('[drives.root]\nfile = "r"\naddr = @@"slot3"\n'),
        "bad-syntax",
        "drives.root.addr",
    ),
    ("shape-empty-name.toml", mv().replace('name = "vm"', 'name = @@""'), "vm-name", "name"),
    ("shape-empty-ifname.toml", mv('[nets.n0]\nifname = @@""\n'), "empty-value", "nets.n0.ifname"),
    ("shape-iothreads-string.toml", mv(top='iothreads = @@"io0"\n'), "wrong-type", "iothreads"),
    ("shape-machine-string.toml", mv(top='machine = @@"q35"\n'), "wrong-type", "machine"),
    ("shape-drives-list.toml", mv(top='drives = @@["r.img"]\n'), "wrong-type", "drives"),
    ("shape-numa-nodes-table.toml", mv("@@[numa.nodes]\nid = 0\n"), "wrong-type", "numa.nodes"),
    (
        "shape-pflash-format.toml",
        q35('[[pflash]]\nunit = 1\nfile = "v.fd"\nformat = @@"qcow2"\n'),
        "bad-value",
        "pflash[1].format",
    ),
    (
        "shape-cgroup-int.toml",
        mv('[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\ncgroup = { "cpuset.cpus" = @@3 }\n'),
        "wrong-type",
        'ozone.cgroup."cpuset.cpus"',
    ),
    (
        "shape-yaml-mac-number.yaml",
        ymv("nets:\n  n0:\n    ifname: tap0\n    mac: @@52:54:00:12:34:56\n"),
        "wrong-type",
        "nets.n0.mac",
    ),
    (
        "shape-yaml-unknown.yaml",
        ymv("cpu_model: host\n").replace("cpu_model", "@@cpu_model"),
        "unknown-key",
        "cpu_model",
    ),
    ("shape-yaml-bool-string.yaml", ymv('daemonize: @@"true"\n'), "wrong-type", "daemonize"),
    ("shape-yaml-date.yaml", ymv("incoming: @@2024-01-01\n"), "wrong-type", "incoming"),
    ("shape-yaml-null.yaml", ymv("machine:\n  type: @@null\n"), "wrong-type", "machine.type"),
    (
        "shape-yaml-nested-unknown.yaml",
        ymv("drives:\n  root:\n    file: r.img\n    @@cache: none\n"),
        "unknown-key",
        "drives.root.cache",
    ),
    (
        "shape-yaml-missing-chardev.yaml",
        ymv("consoles:\n  c0: @@{}\n"),
        "missing-key",
        "consoles.c0",
    ),
    # -- values ------------------------------------------------------------------------------
    (
        "values-cpulist-descending.toml",
        q35('[[numa.nodes]]\nid = 0\ncpus = @@"1-0"\nsize = "1G"\n'),
        "int-list-syntax",
        "numa.nodes[0].cpus",
    ),
    (
        "values-cpulist-equal.toml",
        q35('[[numa.nodes]]\nid = 0\ncpus = @@"1-1"\nsize = "1G"\n'),
        "int-list-syntax",
        "numa.nodes[0].cpus",
    ),
    (
        "values-addr-slot-range.toml",
        q35('[drives.root]\nfile = "r"\naddr = @@"0x20"\n'),
        "pci-addr-syntax",
        "drives.root.addr",
    ),
    (
        "values-addr-function-range.toml",
        q35('[drives.root]\nfile = "r"\naddr = @@"0x3.8"\n'),
        "pci-addr-syntax",
        "drives.root.addr",
    ),
    (
        "values-addr-int-range.toml",
        q35('[drives.root]\nfile = "r"\naddr = @@40\n'),
        "pci-addr-syntax",
        "drives.root.addr",
    ),
    (
        "values-bus-without-addr.toml",
        q35('[drives.root]\nfile = "r"\nbus = @@"pcie.0"\n'),
        "pci-addr-required",
        "drives.root.bus",
    ),
    # -- general -----------------------------------------------------------------------------
    (
        "name-too-long.toml",
        mv().replace('name = "vm"', 'name = @@"' + "v" * 65 + '"'),
        "vm-name",
        "name",
    ),
    (
        "name-leading-dash.toml",
        mv().replace('name = "vm"', 'name = @@"-vm"'),
        "vm-name",
        "name",
    ),
    # one VM-name rule (engine.names): a name is one path component, printable, no newline
    ("name-newline.toml", mv().replace('name = "vm"', 'name = @@"vm\\n"'), "vm-name", "name"),
    ("name-slash.toml", mv().replace('name = "vm"', 'name = @@"a/b"'), "vm-name", "name"),
    ("name-dotdot.toml", mv().replace('name = "vm"', 'name = @@"../x"'), "vm-name", "name"),
    (
        "name-escape.toml",
        mv().replace('name = "vm"', 'name = @@"\\u001b[2J"'),
        "control-character",
        "name",
    ),
    ("name-newline.yaml", ymv().replace("name: vm", 'name: @@"vm\\n"'), "vm-name", "name"),
    (
        "cmdline-too-long.toml",
        mv().replace('cmdline = "console=ttyS0"', 'cmdline = @@"console=ttyS0 ' + "x" * 2048 + '"'),
        "kernel-cmdline-too-long",
        "boot.cmdline",
    ),
    (
        "id-comma.toml",
        mv('[drives."a,b"]\n@@file = "r"\n')
        .replace('[drives."a,b"]', '@@[drives."a,b"]')
        .replace("@@file", "file"),
        "comma-in-value",
        'drives."a,b"',
    ),
    (
        "id-too-long.toml",
        mv(top='iothreads = [@@"' + "i" * 256 + '"]\n'),
        "string-too-long",
        "iothreads[0]",
    ),
    (
        "drive-path-comma.toml",
        mv('[drives.root]\nfile = @@"root,fs.img"\n'),
        "comma-in-value",
        "drives.root.file",
    ),
    (
        "drive-path-too-long.toml",
        mv('[drives.root]\nfile = @@"/' + "d" * 4100 + '"\n'),
        "string-too-long",
        "drives.root.file",
    ),
    (
        "cpu-model-leading-dash.toml",
        mv().replace("cpus = 2", 'cpus = 2\nmodel = @@"-host"'),
        "leading-dash",
        "cpu.model",
    ),
    (
        "cmdline-leading-dash.toml",
        mv().replace('cmdline = "console=ttyS0"', 'cmdline = @@"-x console=ttyS0"'),
        "leading-dash",
        "boot.cmdline",
    ),
    (
        "qmp-colon.toml",
        mv().replace('qmp = "/run/vm.qmp"', 'qmp = @@"/run/vm:1.qmp"'),
        "socket-path",
        "qmp",
    ),
    (
        "qmp-too-long.toml",
        mv().replace('qmp = "/run/vm.qmp"', 'qmp = @@"/run/' + "q" * 120 + '.qmp"'),
        "socket-path",
        "qmp",
    ),
    (
        "qmp-second-colon.toml",
        mv().replace('qmp = "/run/vm.qmp"', 'qmp = ["/run/a.qmp", @@"/run/b:c"]'),
        "socket-path",
        "qmp[1]",
    ),
    (
        "chardev-socket-colon.toml",
        mv('[chardevs.c0]\nbackend = "socket"\npath = @@"/run/a:b"\n'),
        "socket-path",
        "chardevs.c0.path",
    ),
    (
        "qmp-missing-stratovirt.toml",
        "# target: stratovirt\n"
        + mv().replace('qmp = "/run/vm.qmp"\n', "").replace("name =", "@@name ="),
        "qmp-missing",
        "qmp",
    ),
    (
        "pidfile-no-daemonize.toml",
        mv(top='pidfile = @@"/run/vm.pid"\n'),
        "pidfile-needs-daemonize",
        "pidfile",
    ),
    (
        "daemonize-serial-stdio.toml",
        mv(top="daemonize = true\n").replace('serial = "pty"', 'serial = @@"stdio"'),
        "daemonize-stdio",
        "serial",
    ),
    (
        "daemonize-chardev-stdio.toml",
        mv('[chardevs.c0]\nbackend = @@"stdio"\n', top="daemonize = true\n"),
        "daemonize-stdio",
        "chardevs.c0.backend",
    ),
    (
        "stdio-twice.toml",
        mv('[chardevs.c0]\nbackend = @@"stdio"\n').replace('serial = "pty"', 'serial = "stdio"'),
        "stdio-multiple",
        "chardevs.c0.backend",
    ),
    ("incoming-bad-scheme.toml", mv(top='incoming = @@"http://x/y"\n'), "incoming-uri", "incoming"),
    (
        "incoming-tcp-host.toml",
        mv(top='incoming = @@"tcp:example.com:4444"\n'),
        "incoming-uri",
        "incoming",
    ),
    (
        "incoming-tcp-port.toml",
        mv(top='incoming = @@"tcp:10.0.0.1:70000"\n'),
        "incoming-uri",
        "incoming",
    ),
    (
        "snapshot-balloon.toml",
        mv("@@[balloon]\n", top='incoming = "file:/var/lib/tmpl/vm"\n'),
        "snapshot-unsupported",
        "balloon",
    ),
    (
        "snapshot-vhost-net.toml",
        mv('[nets.n0]\nifname = "tap0"\nvhost = @@true\n', top='incoming = "file:/tmpl"\n'),
        "snapshot-unsupported",
        "nets.n0.vhost",
    ),
    (
        "snapshot-mem-share.toml",
        mv("[machine]\nmem-share = @@true\n", top='incoming = "file:/tmpl"\n'),
        "snapshot-unsupported",
        "machine.mem-share",
    ),
    (
        "snapshot-vfio.toml",
        q35('@@[vfio.d0]\nhost = "0000:1a:00.3"\naddr = "0x5"\n', top='incoming = "file:/tmpl"\n'),
        "snapshot-unsupported",
        "vfio.d0",
    ),
    (
        "snapshot-hugepages.toml",
        'name = "vm"\nqmp = "/run/vm.qmp"\nincoming = "file:/tmpl"\n\n[memory]\nsize = "512M"\n'
        'path = @@"/dev/hugepages"\n\n[boot]\nkernel = "vmlinux"\ninitrd = "initrd.img"\n',
        "snapshot-unsupported",
        "memory.path",
    ),
    (
        "iothreads-too-many.toml",
        mv(top='iothreads = @@["a","b","c","d","e","f","g","h","i"]\n'),
        "iothread-limit",
        "iothreads",
    ),
    (
        "iothread-duplicate.toml",
        mv(top='iothreads = ["a", @@"a"]\n'),
        "iothread-duplicate",
        "iothreads[1]",
    ),
    (
        "iothread-unknown.toml",
        mv('[drives.root]\nfile = "r"\niothread = @@"io9"\n', top='iothreads = ["io0"]\n'),
        "iothread-unknown",
        "drives.root.iothread",
    ),
    (
        "iothread-unknown-net.toml",
        mv('[nets.n0]\nifname = "tap0"\niothread = @@"io1"\n'),
        "iothread-unknown",
        "nets.n0.iothread",
    ),
    # -- machine and boot --------------------------------------------------------------------
    (
        "machine-q35-aarch64.toml",
        q35(top='arch = "aarch64"\n').replace('type = "q35"', 'type = @@"q35"'),
        "machine-arch",
        "machine.type",
    ),
    ("machine-virt-x86.toml", mv('[machine]\ntype = @@"virt"\n'), "machine-arch", "machine.type"),
    ("machine-usb-on.toml", mv("[machine]\nusb = @@true\n"), "machine-usb", "machine.usb"),
    (
        "machine-gic-x86.toml",
        mv("[machine]\ngic-version = @@3\n"),
        "gic-version",
        "machine.gic-version",
    ),
    (
        "machine-gic-2.toml",
        mv('[machine]\ntype = "virt"\ngic-version = @@2\n', top='arch = "aarch64"\n'),
        "gic-version",
        "machine.gic-version",
    ),
    (
        "kernel-missing.toml",
        mv().replace('kernel = "vmlinux"\n', "").replace("[boot]", "@@[boot]"),
        "kernel-required",
        "boot.kernel",
    ),
    (
        "rootfs-missing.toml",
        mv().replace('initrd = "initrd.img"\n', "").replace("[boot]", "@@[boot]"),
        "rootfs-required",
        "boot",
    ),
    (
        "initrd-too-long.toml",
        mv().replace('initrd = "initrd.img"', 'initrd = @@"/' + "i" * 260 + '"'),
        "initrd-path-too-long",
        "boot.initrd",
    ),
    (
        "kernel-param-too-long.toml",
        mv().replace('cmdline = "console=ttyS0"', 'cmdline = @@"x=' + "y" * 256 + '"'),
        "kernel-param-too-long",
        "boot.cmdline",
    ),
    (
        "kernel-param-word-too-long.toml",
        mv().replace('cmdline = "console=ttyS0"', 'cmdline = @@"' + "y" * 256 + '"'),
        "kernel-param-too-long",
        "boot.cmdline",
    ),
    (
        "pflash-on-microvm.toml",
        mv('@@[[pflash]]\nunit = 0\nfile = "c.fd"\n'),
        "standard-vm-only",
        "pflash",
    ),
    (
        "root-port-on-microvm.toml",
        mv('@@[root-ports.rp1]\nport = 1\naddr = "0x5"\n'),
        "standard-vm-only",
        "root-ports",
    ),
    (
        "vfio-on-microvm.toml",
        mv('@@[vfio.dev0]\nhost = "0000:1a:00.3"\naddr = "0x5"\n'),
        "standard-vm-only",
        "vfio",
    ),
    ("usb-on-microvm.toml", mv('@@[usb.keyboard]\nid = "kbd"\n'), "standard-vm-only", "usb"),
    (
        "q35-no-pflash.toml",
        q35()
        .replace('[[pflash]]\nunit = 0\nfile = "OVMF_CODE.fd"\nreadonly = true\n', "")
        .replace('type = "q35"', 'type = @@"q35"'),
        "pflash-required",
        "machine.type",
    ),
    (
        "q35-only-pflash1.toml",
        q35().replace("unit = 0", "unit = 1").replace("[[pflash]]", "@@[[pflash]]"),
        "pflash-required",
        "pflash",
    ),
    (
        "pflash-unit-2.toml",
        q35('[[pflash]]\nunit = @@2\nfile = "v.fd"\n'),
        "pflash-unit",
        "pflash[1].unit",
    ),
    (
        "pflash-unit-twice.toml",
        q35('[[pflash]]\nunit = @@0\nfile = "v.fd"\nreadonly = true\n'),
        "pflash-unit",
        "pflash[1].unit",
    ),
    # -- cpu ---------------------------------------------------------------------------------
    ("cpu-zero.toml", mv().replace("cpus = 2", "cpus = @@0"), "cpu-topology", "cpu.cpus"),
    ("cpu-too-many.toml", mv().replace("cpus = 2", "cpus = @@255"), "cpu-topology", "cpu.cpus"),
    (
        "cpu-product.toml",
        mv().replace("cpus = 2", "cpus = 3\nsockets = @@2"),
        "cpu-topology",
        "cpu.sockets",
    ),
    (
        "cpu-maxcpus-small.toml",
        mv().replace("cpus = 2", "cpus = 4\nmaxcpus = @@2"),
        "cpu-topology",
        "cpu.maxcpus",
    ),
    (
        "cpu-maxcpus-product.toml",
        mv().replace("cpus = 2", "cpus = 4\nmaxcpus = 8\nsockets = @@2\ncores = 2\nthreads = 1"),
        "cpu-topology",
        "cpu.sockets",
    ),
    ("cpu-dies.toml", mv().replace("cpus = 2", "cpus = @@4\ndies = 3"), "cpu-topology", "cpu.cpus"),
    (
        "cpu-sockets-zero.toml",
        mv().replace("cpus = 2", "cpus = 2\nsockets = @@0"),
        "cpu-topology",
        "cpu.sockets",
    ),
    (
        "cpu-maxcpus-too-many.toml",
        mv().replace("cpus = 2", "cpus = 2\nmaxcpus = @@300"),
        "cpu-topology",
        "cpu.maxcpus",
    ),
    # -- memory and NUMA ---------------------------------------------------------------------
    (
        "memory-too-small.toml",
        mv().replace('size = "512M"', 'size = @@"64M"'),
        "memory-size-range",
        "memory.size",
    ),
    (
        "memory-too-big.toml",
        mv().replace('size = "512M"', 'size = @@"513G"'),
        "memory-size-range",
        "memory.size",
    ),
    (
        "memory-not-mib.toml",
        mv().replace('size = "512M"', "size = @@536870913"),
        "memory-size-unit",
        "memory.size",
    ),
    (
        "memory-kib.toml",
        mv().replace('size = "512M"', 'size = @@"524289K"'),
        "memory-size-unit",
        "memory.size",
    ),
    (
        "memory-zone-not-mib.toml",
        mv('[[memory.zones]]\nid = "z0"\nsize = @@"1000K"\n'),
        "memory-size-unit",
        "memory.zones[0].size",
    ),
    (
        "memory-zone-dup.toml",
        mv(
            '[[memory.zones]]\nid = "z0"\nsize = "128M"\n[[memory.zones]]\nid = @@"z0"\nsize = "128M"\n'
        ),
        "memory-zone-duplicate",
        "memory.zones[1].id",
    ),
    (
        "host-node-range.toml",
        mv('[[memory.zones]]\nid = "z0"\nsize = "128M"\nhost-nodes = @@[128]\n'),
        "host-node-range",
        "memory.zones[0].host-nodes",
    ),
    (
        "numa-sum.toml",
        q35('@@[[numa.nodes]]\nid = 0\ncpus = "0-1"\nsize = "512M"\n'),
        "numa-memory-sum",
        "numa.nodes",
    ),
    (
        "numa-node-dup.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = [0]\nsize = "512M"\n[[numa.nodes]]\nid = @@0\ncpus = [1]\nsize = "512M"\n'
        ),
        "numa-node-id",
        "numa.nodes[1].id",
    ),
    (
        "numa-node-id-range.toml",
        q35('[[numa.nodes]]\nid = @@128\ncpus = "0-1"\nsize = "1G"\n'),
        "numa-node-id",
        "numa.nodes[0].id",
    ),
    (
        "numa-cpu-range.toml",
        q35('[[numa.nodes]]\nid = 0\ncpus = @@"0-2"\nsize = "1G"\n'),
        "numa-cpu-range",
        "numa.nodes[0].cpus",
    ),
    (
        "numa-cpu-dup.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = [0, 1]\nsize = "512M"\n[[numa.nodes]]\nid = 1\ncpus = @@[1]\nsize = "512M"\n'
        ),
        "numa-cpu-duplicate",
        "numa.nodes[1].cpus",
    ),
    (
        "numa-cpu-dup-same.toml",
        q35('[[numa.nodes]]\nid = 0\ncpus = @@[0, 1, 1]\nsize = "1G"\n'),
        "numa-cpu-duplicate",
        "numa.nodes[0].cpus",
    ),
    (
        "numa-too-many.toml",
        q35(
            "".join(
                f'[[numa.nodes]]\nid = {i}\ncpus = [{i}]\nsize = "128M"\n' for i in range(9)
            ).replace("[[numa.nodes]]\nid = 8", "@@[[numa.nodes]]\nid = 8")
        )
        .replace("cpus = 2", "cpus = 9")
        .replace('size = "1G"', 'size = "1152M"'),
        "numa-node-limit",
        "numa.nodes[8]",
    ),
    (
        "numa-host-node.toml",
        q35('[[numa.nodes]]\nid = 0\ncpus = "0-1"\nsize = "1G"\nhost-nodes = @@[200]\n'),
        "host-node-range",
        "numa.nodes[0].host-nodes",
    ),
    (
        "numa-memdev-dup.toml",
        q35(
            '[[memory.zones]]\nid = "mem0"\nsize = "128M"\n[[numa.nodes]]\nid = @@0\ncpus = "0-1"\nsize = "1G"\n'
        ),
        "memory-zone-duplicate",
        "numa.nodes[0].id",
    ),
    (
        "numa-dist-self.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = "0-1"\nsize = "1G"\n[[numa.distances]]\nsrc = 0\ndst = 0\nval = @@20\n'
        ),
        "numa-distance",
        "numa.distances[0].val",
    ),
    (
        "numa-dist-low.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = [0]\nsize = "512M"\n[[numa.nodes]]\nid = 1\ncpus = [1]\nsize = "512M"\n[[numa.distances]]\nsrc = 0\ndst = 1\nval = @@10\n'
        ),
        "numa-distance",
        "numa.distances[0].val",
    ),
    (
        "numa-dist-high.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = [0]\nsize = "512M"\n[[numa.nodes]]\nid = 1\ncpus = [1]\nsize = "512M"\n[[numa.distances]]\nsrc = 0\ndst = 1\nval = @@256\n'
        ),
        "numa-distance",
        "numa.distances[0].val",
    ),
    (
        "numa-dist-unknown-node.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = "0-1"\nsize = "1G"\n[[numa.distances]]\nsrc = 0\ndst = @@3\nval = 20\n'
        ),
        "numa-distance",
        "numa.distances[0].dst",
    ),
    (
        "numa-dist-dup.toml",
        q35(
            '[[numa.nodes]]\nid = 0\ncpus = [0]\nsize = "512M"\n[[numa.nodes]]\nid = 1\ncpus = [1]\nsize = "512M"\n[[numa.distances]]\nsrc = 0\ndst = 1\nval = 20\n@@[[numa.distances]]\nsrc = 0\ndst = 1\nval = 30\n'
        ),
        "numa-distance",
        "numa.distances[1]",
    ),
    # -- drives ------------------------------------------------------------------------------
    (
        "drive-qcow2.toml",
        mv('[drives.root]\nfile = "r.qcow2"\nformat = @@"qcow2"\n'),
        "drive-format",
        "drives.root.format",
    ),
    (
        "drive-native-no-direct.toml",
        mv('[drives.root]\nfile = "r"\ndirect = false\naio = @@"native"\n'),
        "drive-aio",
        "drives.root.aio",
    ),
    (
        "drive-direct-aio-off.toml",
        mv('[drives.root]\nfile = "r"\naio = @@"off"\n'),
        "drive-aio",
        "drives.root.aio",
    ),
    (
        "drive-iops.toml",
        mv('[drives.root]\nfile = "r"\niops = @@1000001\n'),
        "drive-iops",
        "drives.root.iops",
    ),
    (
        "drive-serial.toml",
        mv('[drives.root]\nfile = "r"\nserial = @@"123456789012345678901"\n'),
        "drive-serial",
        "drives.root.serial",
    ),
    (
        "drive-queues-zero.toml",
        mv('[drives.root]\nfile = "r"\nqueues = @@0\n'),
        "drive-queues",
        "drives.root.queues",
    ),
    (
        "drive-queues-33.toml",
        mv('[drives.root]\nfile = "r"\nqueues = @@33\n'),
        "drive-queues",
        "drives.root.queues",
    ),
    (
        "drive-queue-size-pow2.toml",
        mv('[drives.root]\nfile = "r"\nqueue-size = @@300\n'),
        "queue-size",
        "drives.root.queue-size",
    ),
    (
        "drive-queue-size-small.toml",
        mv('[drives.root]\nfile = "r"\nqueue-size = @@2\n'),
        "queue-size",
        "drives.root.queue-size",
    ),
    (
        "drive-queue-size-big.toml",
        mv('[drives.root]\nfile = "r"\nqueue-size = @@2048\n'),
        "queue-size",
        "drives.root.queue-size",
    ),
    (
        "drive-bootindex.toml",
        mv('[drives.root]\nfile = "r"\nbootindex = @@256\n'),
        "bootindex",
        "drives.root.bootindex",
    ),
    (
        "drive-bootindex-dup.toml",
        q35(
            '[drives.a]\nfile = "a"\naddr = "0x3"\nbootindex = 1\n[drives.b]\nfile = "b"\naddr = "0x4"\nbootindex = @@1\n'
        ),
        "bootindex",
        "drives.b.bootindex",
    ),
    (
        "drive-shared-rw.toml",
        mv('[drives.a]\nfile = "same.img"\nreadonly = true\n[drives.b]\nfile = @@"same.img"\n'),
        "drive-shared",
        "drives.b.file",
    ),
    (
        "drive-too-many-microvm.toml",
        mv(
            '[drives.a]\nfile = "a"\n[drives.b]\nfile = "b"\n[drives.c]\nfile = "c"\n[drives.d]\nfile = "d"\n@@[drives.e]\nfile = "e"\n'
        ),
        "microvm-blk-limit",
        "drives.e",
    ),
    (
        "drive-device-id-dup-microvm.toml",
        mv('[drives.a]\nfile = "a"\ndevice-id = "x"\n@@[drives.b]\nfile = "b"\ndevice-id = "x"\n'),
        "device-id-duplicate",
        "drives.b",
    ),
    (
        "drive-pci-on-microvm.toml",
        mv('[drives.a]\nfile = "a"\ntransport = @@"pci"\naddr = "0x3"\n'),
        "transport-machine",
        "drives.a.transport",
    ),
    (
        "drive-mmio-on-q35.toml",
        q35('[drives.a]\nfile = "a"\ntransport = @@"mmio"\n'),
        "transport-machine",
        "drives.a.transport",
    ),
    (
        "drive-addr-on-mmio.toml",
        mv('[drives.a]\nfile = "a"\naddr = @@"0x3"\n'),
        "pci-on-mmio",
        "drives.a.addr",
    ),
    ("drive-no-addr-q35.toml", q35('@@[drives.a]\nfile = "a"\n'), "pci-addr-required", "drives.a"),
    # -- nets --------------------------------------------------------------------------------
    (
        "net-tap-nothing.toml",
        mv('@@[nets.n0]\nmac = "52:54:00:12:34:56"\n'),
        "net-backend",
        "nets.n0",
    ),
    (
        "net-tap-chardev.toml",
        mv('[nets.n0]\nifname = "tap0"\nchardev = @@"c0"\n'),
        "net-backend",
        "nets.n0.chardev",
    ),
    (
        "net-vhost-user-no-chardev.toml",
        q35('@@[nets.n0]\ntype = "vhost-user"\naddr = "0x3"\n'),
        "net-backend",
        "nets.n0",
    ),
    (
        "net-vhost-user-vhost.toml",
        q35(
            '[chardevs.vu]\nbackend = "socket"\npath = "/run/vu.sock"\n[nets.n0]\ntype = "vhost-user"\nchardev = "vu"\nvhost = @@true\naddr = "0x3"\n'
        ),
        "net-backend",
        "nets.n0.vhost",
    ),
    (
        "net-vhost-user-microvm.toml",
        mv(
            '[chardevs.vu]\nbackend = "socket"\npath = "/run/vu.sock"\n@@[nets.n0]\ntype = "vhost-user"\nchardev = "vu"\n'
        ),
        "net-vhost-user-mmio",
        "nets.n0",
    ),
    (
        "net-ifname-long.toml",
        mv('[nets.n0]\nifname = @@"tap-really-long-name"\n'),
        "net-ifname",
        "nets.n0.ifname",
    ),
    (
        "net-ifname-template.toml",
        mv('[nets.n0]\nifname = @@"tap%d"\n'),
        "net-ifname",
        "nets.n0.ifname",
    ),
    (
        "net-queues-17.toml",
        mv('[nets.n0]\nifname = "tap0"\nqueues = @@17\n'),
        "net-queues",
        "nets.n0.queues",
    ),
    (
        "net-vhostfds-no-vhost.toml",
        mv('[nets.n0]\nifname = "tap0"\nvhostfds = @@[4]\n'),
        "net-queues",
        "nets.n0.vhostfds",
    ),
    (
        "net-fds-17.toml",
        mv("[nets.n0]\nfds = @@[" + ", ".join(str(i) for i in range(3, 20)) + "]\n"),
        "net-queues",
        "nets.n0.fds",
    ),
    (
        "net-mac-dash.toml",
        mv('[nets.n0]\nifname = "tap0"\nmac = @@"52-54-00-12-34-56"\n'),
        "net-mac",
        "nets.n0.mac",
    ),
    (
        "net-mac-short.toml",
        mv('[nets.n0]\nifname = "tap0"\nmac = @@"52:54:0:12:34:56"\n'),
        "net-mac",
        "nets.n0.mac",
    ),
    (
        "net-mac-nonhex.toml",
        mv('[nets.n0]\nifname = "tap0"\nmac = @@"52:54:00:12:34:zz"\n'),
        "net-mac",
        "nets.n0.mac",
    ),
    (
        "net-queue-size-small.toml",
        mv('[nets.n0]\nifname = "tap0"\nqueue-size = @@128\n'),
        "queue-size",
        "nets.n0.queue-size",
    ),
    (
        "net-queue-size-big.toml",
        mv('[nets.n0]\nifname = "tap0"\nqueue-size = @@8192\n'),
        "queue-size",
        "nets.n0.queue-size",
    ),
    (
        "net-too-many-microvm.toml",
        mv('[nets.a]\nifname = "ta"\n[nets.b]\nifname = "tb"\n@@[nets.c]\nifname = "tc"\n'),
        "microvm-net-limit",
        "nets.c",
    ),
    (
        "net-vhost-user-chardev-server.toml",
        q35(
            '[chardevs.vu]\nbackend = "socket"\npath = "/run/vu.sock"\nserver = true\n[nets.n0]\ntype = "vhost-user"\nchardev = @@"vu"\naddr = "0x3"\n'
        ),
        "vhost-user-chardev",
        "nets.n0.chardev",
    ),
    # -- chardevs, consoles, monitors --------------------------------------------------------
    (
        "chardev-socket-no-path.toml",
        mv('@@[chardevs.c0]\nbackend = "socket"\n'),
        "chardev-options",
        "chardevs.c0",
    ),
    (
        "chardev-file-no-path.toml",
        mv('@@[chardevs.c0]\nbackend = "file"\n'),
        "chardev-options",
        "chardevs.c0",
    ),
    (
        "chardev-pty-server.toml",
        mv('[chardevs.c0]\nbackend = "pty"\nserver = @@true\n'),
        "chardev-options",
        "chardevs.c0.server",
    ),
    (
        "serial-file-no-path.toml",
        mv()
        .replace('serial = "pty"\n', "")
        .replace("[cpu]", '@@[serial]\nbackend = "file"\n\n[cpu]'),
        "chardev-options",
        "serial",
    ),
    (
        "console-unknown-chardev.toml",
        mv('[chardevs.con0]\nbackend = "pty"\n[consoles.c0]\nchardev = @@"con1"\n'),
        "chardev-unknown",
        "consoles.c0.chardev",
    ),
    (
        "console-chardev-twice.toml",
        mv(
            '[chardevs.con0]\nbackend = "pty"\n[consoles.c0]\nchardev = "con0"\n[consoles.c1]\nchardev = @@"con0"\n'
        ),
        "chardev-consumed",
        "consoles.c1.chardev",
    ),
    (
        "monitor-not-server.toml",
        mv(
            '[chardevs.m0]\nbackend = "socket"\npath = "/run/m.sock"\n[[monitors]]\nchardev = @@"m0"\n'
        ),
        "monitor-chardev",
        "monitors[0].chardev",
    ),
    (
        "monitor-unknown.toml",
        mv('[[monitors]]\nchardev = @@"mon"\n'),
        "chardev-unknown",
        "monitors[0].chardev",
    ),
    (
        "monitor-and-console.toml",
        mv(
            '[chardevs.m0]\nbackend = "socket"\npath = "/run/m.sock"\nserver = true\nnowait = true\n[consoles.c0]\nchardev = "m0"\n[[monitors]]\nchardev = @@"m0"\n'
        ),
        "chardev-consumed",
        "monitors[0].chardev",
    ),
    (
        "consoles-two-q35.toml",
        q35(
            '[chardevs.a]\nbackend = "pty"\n[chardevs.b]\nbackend = "pty"\n[virtio-serial]\nid = "vs"\naddr = "0x3"\n[consoles.c0]\nchardev = "a"\n@@[consoles.c1]\nchardev = "b"\n'
        ),
        "console-limit",
        "consoles.c1",
    ),
    # -- vsock, balloon, rng, vfio, usb ------------------------------------------------------
    ("vsock-cid-2.toml", mv("[vsock]\nguest-cid = @@2\n"), "vsock-cid", "vsock.guest-cid"),
    (
        "vsock-cid-max.toml",
        mv("[vsock]\nguest-cid = @@4294967295\n"),
        "vsock-cid",
        "vsock.guest-cid",
    ),
    (
        "rng-period-missing.toml",
        mv("[rngs.r0]\nmax-bytes = 1000\n").replace("[rngs.r0]", "@@[rngs.r0]"),
        "rng-rate",
        "rngs.r0.period",
    ),
    (
        "rng-period-zero.toml",
        mv("[rngs.r0]\nmax-bytes = 1000\nperiod = @@0\n"),
        "rng-rate",
        "rngs.r0.period",
    ),
    (
        "rng-rate-low.toml",
        mv("[rngs.r0]\nmax-bytes = @@63\nperiod = 1000\n"),
        "rng-rate",
        "rngs.r0.max-bytes",
    ),
    (
        "rng-rate-low-rounding.toml",
        mv("[rngs.r0]\nmax-bytes = @@64\nperiod = 1001\n"),
        "rng-rate",
        "rngs.r0.max-bytes",
    ),
    (
        "rng-rate-high.toml",
        mv("[rngs.r0]\nmax-bytes = @@1000000001\nperiod = 1000\n"),
        "rng-rate",
        "rngs.r0.max-bytes",
    ),
    (
        "vfio-both.toml",
        q35('@@[vfio.d0]\nhost = "0000:1a:00.3"\nsysfsdev = "/sys/x"\naddr = "0x5"\n'),
        "vfio-host",
        "vfio.d0",
    ),
    ("vfio-neither.toml", q35('@@[vfio.d0]\naddr = "0x5"\n'), "vfio-host", "vfio.d0"),
    (
        "vfio-host-syntax.toml",
        q35('[vfio.d0]\nhost = @@"1a:00.3"\naddr = "0x5"\n'),
        "vfio-host",
        "vfio.d0.host",
    ),
    ("usb-p2-zero.toml", q35('[usb.xhci]\naddr = "0x5"\np2 = @@0\n'), "usb-ports", "usb.xhci.p2"),
    (
        "usb-kbd-no-xhci.toml",
        q35('@@[usb.keyboard]\nid = "kbd"\n'),
        "usb-needs-xhci",
        "usb.keyboard",
    ),
    (
        "pvpanic-stratovirt.toml",
        "# target: stratovirt\n" + mv('@@[pvpanic]\non-panic = "pause"\n'),
        "pvpanic-stratovirt",
        "pvpanic",
    ),
    (
        "microvm-irq-pool.toml",
        mv("".join(f"[rngs.r{i}]\n" for i in range(5)) + "@@[rngs.r5]\n"),
        "microvm-irq-limit",
        "rngs.r5",
    ),
    # -- PCI placement -----------------------------------------------------------------------
    (
        "pci-slot-0.toml",
        q35('[drives.a]\nfile = "a"\naddr = @@"0x0"\n'),
        "pci-slot-reserved",
        "drives.a.addr",
    ),
    (
        "pci-slot-1f-q35.toml",
        q35('[drives.a]\nfile = "a"\naddr = @@"0x1f"\n'),
        "pci-slot-reserved",
        "drives.a.addr",
    ),
    (
        "pci-devfn-dup.toml",
        q35('[drives.a]\nfile = "a"\naddr = "0x3"\n[drives.b]\nfile = "b"\naddr = @@"0x3"\n'),
        "pci-devfn-duplicate",
        "drives.b.addr",
    ),
    (
        "pci-multifunction.toml",
        q35('[drives.a]\nfile = "a"\naddr = "0x3"\n[drives.b]\nfile = "b"\naddr = @@"0x3.0x1"\n'),
        "pci-multifunction",
        "drives.b.addr",
    ),
    (
        "pci-multifunction-reverse.toml",
        q35('[drives.b]\nfile = "b"\naddr = @@"0x3.0x1"\n[drives.a]\nfile = "a"\naddr = "0x3"\n'),
        "pci-multifunction",
        "drives.b.addr",
    ),
    (
        "pci-bus-unknown.toml",
        q35('[drives.a]\nfile = "a"\nbus = @@"pcie.7"\naddr = "0x0"\n'),
        "pci-bus-unknown",
        "drives.a.bus",
    ),
    (
        "pci-root-port-order.toml",
        q35(
            '[root-ports.rp2]\nport = 2\nbus = @@"rp1"\naddr = "0x0"\n[root-ports.rp1]\nport = 1\naddr = "0x5"\n'
        ),
        "pci-bus-unknown",
        "root-ports.rp2.bus",
    ),
    (
        "pci-root-port-slot.toml",
        q35(
            '[root-ports.rp1]\nport = 1\naddr = "0x5"\n[drives.a]\nfile = "a"\nbus = "rp1"\naddr = @@"0x1"\n'
        ),
        "pci-root-port-slot",
        "drives.a.addr",
    ),
    (
        "pci-id-dup.toml",
        q35('[drives.a]\nfile = "a"\naddr = "0x3"\n@@[nets.a]\nifname = "tap0"\naddr = "0x4"\n'),
        "device-id-duplicate",
        "nets.a",
    ),
    ("pci-balloon-no-id.toml", q35('@@[balloon]\naddr = "0x3"\n'), "device-id-required", "balloon"),
    (
        "pci-virtio-serial-no-id.toml",
        q35(
            '[chardevs.c]\nbackend = "pty"\n@@[virtio-serial]\naddr = "0x3"\n[consoles.con]\nchardev = "c"\n'
        ),
        "device-id-required",
        "virtio-serial",
    ),
    (
        "pci-root-port-id-pcie0.toml",
        q35('@@[root-ports."pcie.0"]\nport = 1\naddr = "0x5"\n'),
        "device-id-duplicate",
        'root-ports."pcie.0"',
    ),
    (
        "root-port-port-range.toml",
        q35('[root-ports.rp1]\nport = @@256\naddr = "0x5"\n'),
        "root-port-range",
        "root-ports.rp1.port",
    ),
    (
        "root-port-chassis-range.toml",
        q35('[root-ports.rp1]\nport = 1\nchassis = @@300\naddr = "0x5"\n'),
        "root-port-range",
        "root-ports.rp1.chassis",
    ),
    (
        "pci-addr-bare-decimal-slot.toml",
        q35('[drives.a]\nfile = "a"\naddr = @@"31"\n'),
        "pci-slot-reserved",
        "drives.a.addr",
    ),
    # -- ozone -------------------------------------------------------------------------------
    (
        "ozone-uid.toml",
        mv('[ozone]\nexec-file = "/s"\nuid = @@70000\ngid = 1\n'),
        "ozone-id-range",
        "ozone.uid",
    ),
    (
        "ozone-gid.toml",
        mv('[ozone]\nexec-file = "/s"\nuid = 1\ngid = @@65536\n'),
        "ozone-id-range",
        "ozone.gid",
    ),
    (
        "ozone-capability.toml",
        mv('[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\ncapabilities = [@@"CAP_NET_ADMN"]\n'),
        "ozone-capability",
        "ozone.capabilities[0]",
    ),
    (
        "ozone-capability-noprefix.toml",
        mv(
            '[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\ncapabilities = ["CAP_CHOWN", @@"SYS_ADMIN"]\n'
        ),
        "ozone-capability",
        "ozone.capabilities[1]",
    ),
    (
        "ozone-cgroup-key.toml",
        mv('[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\ncgroup = { @@"cpu.shares" = "100" }\n'),
        "ozone-cgroup-key",
        'ozone.cgroup."cpu.shares"',
    ),
    (
        "ozone-cgroup-value.toml",
        mv(
            '[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\nnuma = "0"\n[ozone.cgroup]\n"cpuset.cpus" = @@"a=b"\n'
        ),
        "ozone-cgroup",
        'ozone.cgroup."cpuset.cpus"',
    ),
    (
        "ozone-name-slash.toml",
        mv('[ozone]\nexec-file = "/s"\nuid = 1\ngid = 1\nname = @@"a/b"\n'),
        "ozone-name",
        "ozone.name",
    ),
    # -- YAML semantic -----------------------------------------------------------------------
    (
        "yaml-cpu-product.yaml",
        ymv().replace("  cpus: 2", "  cpus: 3\n  sockets: @@2"),
        "cpu-topology",
        "cpu.sockets",
    ),
    (
        "yaml-memory-range.yaml",
        ymv().replace("size: 512M", "size: @@100M"),
        "memory-size-range",
        "memory.size",
    ),
    (
        "yaml-queue-size.yaml",
        ymv("drives:\n  root:\n    file: r.img\n    queue-size: @@100\n"),
        "queue-size",
        "drives.root.queue-size",
    ),
    (
        "yaml-mac.yaml",
        ymv('nets:\n  n0:\n    ifname: tap0\n    mac: @@"52:54:00:12:34"\n'),
        "net-mac",
        "nets.n0.mac",
    ),
    (
        "yaml-iothread.yaml",
        ymv("drives:\n  root:\n    file: r.img\n    iothread: @@io0\n"),
        "iothread-unknown",
        "drives.root.iothread",
    ),
    ("yaml-vsock.yaml", ymv("vsock:\n  guest-cid: @@1\n"), "vsock-cid", "vsock.guest-cid"),
    (
        "yaml-rng.yaml",
        ymv("rngs:\n  r0:\n    max-bytes: @@10\n    period: 1000\n"),
        "rng-rate",
        "rngs.r0.max-bytes",
    ),
    (
        "yaml-numa-microvm-sum.yaml",
        ymv("numa:\n  nodes:\n    @@- id: 0\n      cpus: [0, 1]\n      size: 256M\n"),
        "numa-memory-sum",
        "numa.nodes",
    ),
    (
        "yaml-pflash-microvm.yaml",
        ymv("pflash:\n  @@- unit: 0\n    file: c.fd\n"),
        "standard-vm-only",
        "pflash",
    ),
    (
        "yaml-kernel-missing.yaml",
        ymv().replace("  kernel: vmlinux\n", "").replace("boot:\n", "@@boot:\n"),
        "kernel-required",
        "boot.kernel",
    ),
    (
        "yaml-ozone-cap.yaml",
        ymv("ozone:\n  exec-file: /s\n  uid: 1\n  gid: 1\n  capabilities: [@@cap_foo]\n"),
        "ozone-capability",
        "ozone.capabilities[0]",
    ),
    (
        "yaml-chardev-dup-use.yaml",
        ymv("chardevs:\n  c: {backend: pty}\nconsoles:\n  a: {chardev: c}\n  b: {chardev: @@c}\n"),
        "chardev-consumed",
        "consoles.b.chardev",
    ),
    (
        "yaml-drive-aio.yaml",
        ymv("drives:\n  root:\n    file: r.img\n    direct: false\n    aio: @@native\n"),
        "drive-aio",
        "drives.root.aio",
    ),
    (
        "yaml-alias-bomb.yaml",
        "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n@@f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
        "yaml-syntax",
        "f",
    ),
    (
        "yaml-inline-unknown.yaml",
        ymv("drives: {root: {file: r.img, @@bogus: 1}}\n"),
        "unknown-key",
        "drives.root.bogus",
    ),
    ("yaml-name-list.yaml", ymv().replace("name: vm", "name: @@[vm]"), "wrong-type", "name"),
    # -- svlaunch's own keys (launcher/validate/placement.py) ------------------------------------
    ("hosts-bad-name.toml", mv(top='hosts = ["h1", @@"h_2"]'), "hosts-entry", "hosts[1]"),
    ("depends-on-self.toml", mv(top='depends-on = [@@"vm"]'), "depends-on", "depends-on[0]"),
    (
        "balloon-target-big.toml",
        mv('[balloon]\ntarget = @@"1G"\n'),
        "balloon-target",
        "balloon.target",
    ),
]


def render(text: str, code: str, path: str) -> tuple[str, int, int]:
    """The file text (expectation header + case) and the marker's 1-based line/col."""
    at = text.index("@@")
    clean = text.replace("@@", "", 1)
    before = clean[:at]
    line = before.count("\n") + 2  # +1 for the header line
    col = at - (before.rfind("\n") + 1) + 1
    header = f"# expect: {code} {line}:{col} {path}\n"
    return header + clean, line, col


def main() -> None:
    for name in os.listdir(HERE):
        if name.endswith((".toml", ".yaml", ".yml")):
            os.unlink(os.path.join(HERE, name))
    names = set()
    for name, text, code, path in CASES:
        assert name not in names, name
        names.add(name)
        body, _, _ = render(text, code, path)
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            f.write(body)
    print(f"wrote {len(CASES)} cases")


if __name__ == "__main__":
    main()
