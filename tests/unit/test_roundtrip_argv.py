"""argv round trips: every StratoVirt spelling of one VM imports to the same model, and
``import(cmdline(import(a))) == import(a)``.

Hypothesis picks, for each option, one of the spellings StratoVirt v2.2 accepts (bool synonyms,
``-smp 4`` vs ``cpus=4``, ``-m 1024`` vs ``1G``, decimal vs hex PCI addresses, explicit
defaults, shuffled keys and options, a leading program path, ``-device a b``), so the importer
must normalise them all to one model and emission must be its fixpoint. (Keys whose default
depends on other fields, like ``aio`` or ``num-queues``, are kept when written explicitly: the
model records them, so they are not alternative spellings here.)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.compile.stratovirt.emit import emit_argv
from launcher.compile.stratovirt.importer import import_argv

T = ["on", "true", "yes"]
F = ["off", "false", "no"]


def pick(draw, options: list[str]) -> str:
    return draw(st.sampled_from(options))


def keys(draw, head: str | None, pairs: list[str]) -> str:
    """A property list with the type word first and the rest in any order."""
    rest = draw(st.permutations([p for p in pairs if p]))
    return ",".join(([head] if head else []) + list(rest))


@st.composite
def microvm_argv(draw) -> list[list[str]]:
    """Option groups for one microvm; devices keep their relative order in the last group."""
    groups = [
        ["-name", "web"],
        [
            "-machine",
            keys(
                draw,
                pick(draw, ["microvm", "type=microvm", "MicroVM"]),
                [
                    f"dump-guest-core={pick(draw, T)}",
                    pick(draw, ["", "mem-share=off", "mem-share=no"]),
                ],
            ),
        ],
        [
            "-smp",
            pick(
                draw,
                ["4", "cpus=4", "4,maxcpus=0", "cpus=4,maxcpus=0"],
            ),
        ],
        ["-m", pick(draw, ["1024", "1024M", "1024m", "1G", "1g", "size=1G"])],
        ["-kernel", "/boot/vmlinux"],
        *(
            [["-append", "console=ttyS0", "reboot=k", "panic=1"]]
            if draw(st.booleans())
            else [["-append", "console=ttyS0 reboot=k"], ["-append", "panic=1"]]
        ),
        [
            "-drive",
            keys(
                draw,
                None,
                [
                    "id=root",
                    "file=/img/root.ext4",
                    pick(draw, ["", "if=none"]),
                    pick(draw, ["", "format=raw"]),
                    pick(draw, ["", "direct=on", "direct=true", "direct=yes"]),
                    pick(draw, ["", f"readonly={pick(draw, F)}"]),
                ],
            ),
        ],
        [
            "-drive",
            keys(
                draw,
                None,
                [
                    "id=data",
                    "file=/img/data.raw",
                    f"readonly={pick(draw, T)}",
                    f"direct={pick(draw, F)}",
                ],
            ),
        ],
        [
            "-netdev",
            keys(
                draw,
                "tap",
                [
                    "id=net0",
                    "ifname=tap0",
                    pick(draw, ["fd=3", "fds=3"]),
                ],
            ),
        ],
        ["-chardev", keys(draw, "socket", ["id=con0", "path=/run/web.con", "server", "nowait"])],
        ["-object", keys(draw, "iothread", ["id=io0"])],
        ["-object", keys(draw, "rng-random", ["id=rng0", "filename=/dev/urandom"])],
        ["-serial", pick(draw, ["stdio", "pty", "file,path=/var/log/web.serial"])],
        [
            "-qmp",
            pick(draw, ["unix:/run/web.qmp,server,nowait", "unix:/run/web.qmp,nowait,server"]),
        ],
        *([["-D"]] if draw(st.booleans()) else []),
        *([["-disable-seccomp"]] if draw(st.booleans()) else []),
    ]
    devices = [
        keys(
            draw,
            "virtio-blk-device",
            ["drive=root", "id=root", pick(draw, ["", "queue-size=256"]), "iothread=io0"],
        ),
        keys(draw, "virtio-blk-device", ["drive=data", "id=disk1"]),
        keys(
            draw,
            "virtio-net-device",
            [
                "netdev=net0",
                "id=net0",
                "mac=52:54:00:12:34:56",
                pick(draw, ["", f"mq={pick(draw, F)}"]),
            ],
        ),
        keys(draw, "virtio-serial-device", []),
        keys(draw, "virtconsole", ["id=console0", "chardev=con0"]),
        keys(
            draw,
            "virtio-rng-device",
            ["rng=rng0", pick(draw, ["", "id=rng0"]), "max-bytes=1234", "period=1000"],
        ),
        keys(
            draw,
            "virtio-balloon-device",
            [f"deflate-on-oom={pick(draw, T)}", f"free-page-reporting={pick(draw, F)}"],
        ),
    ]
    if draw(st.booleans()):
        groups.append(["-device", *devices])
    else:
        groups += [["-device", d] for d in devices]
    return groups


@st.composite
def q35_argv(draw) -> list[list[str]]:
    groups = [
        ["-name", "std"],
        ["-machine", pick(draw, ["q35", "type=q35", "Q35"])],
        ["-smp", pick(draw, ["2", "cpus=2"])],
        ["-m", pick(draw, ["2G", "2048"])],
        ["-kernel", "/boot/vmlinux"],
        [
            "-drive",
            keys(
                draw,
                None,
                ["file=/fw/OVMF_CODE.fd", "if=pflash", "unit=0", f"readonly={pick(draw, T)}"],
            ),
        ],
        ["-drive", keys(draw, None, ["id=root", "file=/img/root.ext4"])],
        [
            "-object",
            keys(
                draw,
                "memory-backend-ram",
                ["size=1G", "id=mem0", "host-nodes=0", pick(draw, ["policy=bind", "policy=BIND"])],
            ),
        ],
        [
            "-object",
            keys(
                draw,
                "memory-backend-ram",
                [
                    "size=1024M",
                    "id=mem1",
                    pick(draw, ["host-nodes=0-1", "host-nodes=[0-1]", "host-nodes=0:1"]),
                    "policy=interleave",
                ],
            ),
        ],
        [
            "-numa",
            keys(draw, "node", ["nodeid=0", pick(draw, ["cpus=0", "cpus=[0]"]), "memdev=mem0"]),
        ],
        ["-numa", keys(draw, "node", ["nodeid=1", "cpus=1", "memdev=mem1"])],
        ["-numa", keys(draw, "dist", ["src=0", "dst=1", "val=20"])],
        ["-global", "pcie-root-port.fast-unplug=" + pick(draw, ["0", "1"])],
        ["-qmp", "unix:/run/std.qmp,server,nowait"],
    ]
    devices = [
        keys(
            draw,
            "pcie-root-port",
            [
                "id=pcie.1",
                pick(draw, ["port=0x1", "port=1"]),
                "bus=pcie.0",
                pick(draw, ["addr=0x5", "addr=5", "addr=0x5.0x0", "addr=0x5.0"]),
                "chassis=1",
            ],
        ),
        keys(
            draw,
            "virtio-blk-pci",
            [
                "id=root",
                "drive=root",
                "bus=pcie.1",
                pick(draw, ["addr=0x0", "addr=0"]),
                "bootindex=1",
            ],
        ),
        keys(
            draw,
            "virtio-balloon-pci",
            [
                "id=bal0",
                "bus=pcie.0",
                pick(draw, ["addr=0x10", "addr=16"]),
            ],
        ),
        keys(draw, "nec-usb-xhci", ["id=xhci", "bus=pcie.0", "addr=0x7"]),
        keys(draw, "usb-kbd", ["id=kbd"]),
    ]
    return [*groups, *[["-device", d] for d in devices]]


def _keeps_order(group: list[str]) -> bool:
    """Devices are realized, memory laid out and -append joined in argv order."""
    return group[0] in ("-device", "-append") or (
        len(group) > 1 and group[1].startswith("memory-backend-ram")
    )


def shuffled(draw, groups: list[list[str]]) -> list[str]:
    """Options in any order, except those whose relative order StratoVirt gives a meaning."""
    order = list(draw(st.permutations(groups)))
    fixed = iter([g for g in groups if _keeps_order(g)])
    order = [next(fixed) if _keeps_order(g) else g for g in order]
    prog = draw(st.sampled_from([[], ["/usr/bin/stratovirt"]]))
    return prog + [a for g in order for a in g]


@st.composite
def spellings(draw, groups_strategy) -> list[str]:
    return shuffled(draw, draw(groups_strategy))


SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(spellings(microvm_argv()), spellings(microvm_argv()))
def test_all_microvm_spellings_import_to_one_model(a: list[str], b: list[str]) -> None:
    ma, mb = import_argv(a).manifest, import_argv(b).manifest
    if (ma.serial, ma.log, ma.seccomp) == (mb.serial, mb.log, mb.seccomp):
        assert ma == mb
    assert import_argv(emit_argv(ma)).manifest == ma


@SETTINGS
@given(spellings(q35_argv()), spellings(q35_argv()))
def test_all_q35_spellings_import_to_one_model(a: list[str], b: list[str]) -> None:
    ma, mb = import_argv(a).manifest, import_argv(b).manifest
    if ma.fast_unplug == mb.fast_unplug:
        assert ma == mb
    assert import_argv(emit_argv(ma)).manifest == ma
    assert emit_argv(import_argv(emit_argv(ma)).manifest) == emit_argv(ma)
