"""Round trips with hypothesis: ``import(cmdline(m)) == m`` for valid models, and the argv fixpoint.

The strategy builds models that respect StratoVirt's rules (unique ids, consumed backends,
free PCI slots, microvm limits, NUMA sums), so ``import_argv`` also runs ``check_model`` on the
result: a disagreement between emission, import and validation fails here.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from launcher.compile.stratovirt.emit import emit_argv
from launcher.compile.stratovirt.importer import import_argv
from launcher.compile.stratovirt.ozone import emit_ozone, import_ozone, jail_dir
from launcher.model import (
    Aio,
    Balloon,
    Boot,
    Chardev,
    ChardevBackend,
    Console,
    Cpu,
    Discard,
    Drive,
    Log,
    Machine,
    MachineType,
    Manifest,
    Memory,
    Monitor,
    Net,
    Numa,
    NumaDistance,
    NumaNode,
    NumaPolicy,
    Ozone,
    PciAddress,
    Pflash,
    Rng,
    RootPort,
    Usb,
    UsbController,
    UsbKeyboard,
    UsbTablet,
    Vfio,
    VirtioSerial,
    Vsock,
)

MIB = 1 << 20
IDENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).map(
    lambda s: "x" + s
)
WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789=._/", min_size=1, max_size=12).filter(
    lambda w: w.count("=") <= 1 and not w.startswith("=")
)


def ids(draw, n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}{draw(IDENT)}" for i in range(n)]


@st.composite
def topologies(draw) -> Cpu:
    cpus = draw(st.integers(1, 8))
    if draw(st.booleans()):
        return Cpu(cpus, model=draw(st.sampled_from([None, "host"])))
    s, c, t = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    cpus = min(cpus, s * c * t)
    return Cpu(cpus, maxcpus=s * c * t, sockets=s, cores=c, threads=t)


@st.composite
def models(draw, machine: MachineType | None = None) -> Manifest:
    mtype = machine or draw(st.sampled_from([MachineType.MICROVM, MachineType.Q35]))
    q35 = mtype is MachineType.Q35
    slots = iter(draw(st.permutations(range(1, 31))))

    def place(bus: str = "pcie.0") -> PciAddress | None:
        return (
            PciAddress(bus, next(slots), 0, draw(st.sampled_from([None, True, False])))
            if q35
            else None
        )

    cpu = draw(topologies())
    iothreads = tuple(ids(draw, draw(st.integers(0, 2)), "io"))
    io = st.sampled_from([None, *iothreads])
    # NUMA (q35 only: StratoVirt ignores -numa on microvm)
    nodes: list[NumaNode] = []
    if q35 and cpu.cpus >= 2 and draw(st.booleans()):
        half = cpu.cpus // 2
        for nid, cpus in ((0, tuple(range(half))), (1, tuple(range(half, cpu.cpus)))):
            size = draw(st.integers(1, 4)) * 64 * MIB
            memdev = draw(st.sampled_from([None, f"ram{nid}"]))
            nodes.append(NumaNode(nid, cpus, size, (0,), NumaPolicy.BIND, memdev))
    dists = (
        (NumaDistance(0, 1, draw(st.integers(11, 40))),) if nodes and draw(st.booleans()) else ()
    )
    size = sum(n.size for n in nodes) or draw(st.integers(128, 4096).map(lambda n: n * MIB))
    if nodes and size < 128 * MIB:
        nodes[0] = dataclasses.replace(nodes[0], size=nodes[0].size + 128 * MIB)
        size = sum(n.size for n in nodes)
    memory = Memory(size, draw(st.sampled_from([None, "/dev/hugepages"])), draw(st.booleans()))
    # drives
    drives = []
    bootindexes = iter(draw(st.permutations(range(0, 20))))
    for did in ids(draw, draw(st.integers(0, 3)), "d"):
        direct = draw(st.booleans())
        aio = draw(st.sampled_from([None, Aio.IO_URING, Aio.NATIVE if direct else Aio.OFF]))
        attached = draw(st.booleans()) or did.startswith("d0")
        drives.append(
            Drive(
                did,
                f"/img/{did}.img",
                readonly=draw(st.booleans()),
                direct=direct,
                aio=aio,
                iops=draw(st.sampled_from([None, 1, 1000, 1_000_000])),
                discard=draw(st.sampled_from(Discard)),
                attached=attached,
                device_id=draw(st.sampled_from([None, f"blk-{did}"])) if attached else None,
                serial=draw(st.sampled_from([None, "s-" + did[:10]])) if attached else None,
                iothread=draw(io) if attached else None,
                queues=draw(st.sampled_from([None, 1])) if attached else None,
                queue_size=draw(st.sampled_from([4, 128, 256, 1024])) if attached else 256,
                bootindex=draw(st.sampled_from([None, next(bootindexes)]))
                if attached and q35
                else None,
                pci=place() if attached else None,
            )
        )
    # chardevs: a socket for the monitor, the rest for consoles
    chardevs: list[Chardev] = []
    consoles: list[Console] = []
    monitors: tuple[Monitor, ...] = ()
    for cid in ids(draw, draw(st.integers(0, 1 if q35 else 2)), "c"):
        backend = draw(
            st.sampled_from([ChardevBackend.SOCKET, ChardevBackend.FILE, ChardevBackend.PTY])
        )
        path = None if backend is ChardevBackend.PTY else f"/run/{cid}"
        sock = backend is ChardevBackend.SOCKET
        chardevs.append(
            Chardev(cid, backend, path, sock and draw(st.booleans()), sock and draw(st.booleans()))
        )
        consoles.append(Console(f"con-{cid}", cid))
    if draw(st.booleans()):
        chardevs.append(Chardev("monsock", ChardevBackend.SOCKET, "/run/mon.sock", True, True))
        monitors = (Monitor("monsock", draw(st.sampled_from([None, "mon0"]))),)
    virtio_serial = None
    if consoles or draw(st.booleans()):
        vsid = draw(st.sampled_from(["vser0"] if q35 else [None, "vser0"]))
        virtio_serial = None if (vsid is None and consoles) else VirtioSerial(vsid, None, place())
    # nets
    nets = []
    for n, nid in enumerate(ids(draw, draw(st.integers(0, 2)), "n")):
        vhost = draw(st.sampled_from([None, False, True]))
        nets.append(
            Net(
                nid,
                ifname=f"tap{n}",
                vhost=vhost,
                vhostfds=draw(st.sampled_from([(), (7,)])) if vhost else (),
                queues=draw(st.sampled_from([None, 1, 2])),
                device_id=draw(st.sampled_from([None, f"net-{nid}"])),
                mac=draw(st.sampled_from([None, f"52:54:00:12:34:{n:02x}"])),
                mq=draw(st.booleans()),
                iothread=draw(io),
                queue_size=draw(st.sampled_from([256, 4096])),
                pci=place(),
            )
        )
    serial = draw(st.sampled_from([None, "stdio", "pty", "file", "socket"]))
    serial_dev = None
    if serial:
        backend = ChardevBackend(serial)
        path = f"/run/{serial}.serial" if serial in ("file", "socket") else None
        sock = serial == "socket"
        serial_dev = Chardev("serial_chardev", backend, path, sock, sock)
    rng = None
    if draw(st.booleans()):
        period = draw(st.sampled_from([None, 1000]))
        rng = Rng("rng0", "/dev/urandom", 64000 if period else None, period,
                  draw(st.sampled_from([None, "rngdev"])), None, place())  # fmt: skip
    extras: dict = {}
    if q35:
        ports = [RootPort(f"pcie.{i + 1}", i + 1, place(), draw(st.sampled_from([None, 1]))) for i in range(draw(st.integers(0, 2)))]  # fmt: skip
        extras = dict(
            root_ports=tuple(ports),
            pflash=(Pflash(0, "/fw/OVMF_CODE.fd", True), Pflash(1, "/fw/OVMF_VARS.fd")),
            vfio=tuple(Vfio(f"vf{i}", PciAddress(ports[i].id, 0), host=f"0000:1a:00.{i}") for i in range(len(ports))),
            usb=Usb(UsbController(PciAddress("pcie.0", next(slots)), "xhci", draw(st.sampled_from([None, 4])), None),
                    UsbKeyboard("kbd"), draw(st.sampled_from([None, UsbTablet("tablet")])))
            if draw(st.booleans()) else Usb(),
            fast_unplug=draw(st.sampled_from([None, True, False])),
        )  # fmt: skip
    daemonize = serial != "stdio" and draw(st.booleans())
    vsock = (
        Vsock(draw(st.integers(3, 2**32 - 2)), "vsock0", None, None, place())
        if draw(st.booleans())
        else None
    )
    balloon = (
        Balloon(
            draw(st.sampled_from(["bal0"] if q35 else [None, "bal0"])),
            draw(st.booleans()),
            draw(st.booleans()),
            None,
            place(),
        )
        if draw(st.booleans())
        else None
    )
    if not q35:  # the microvm IRQ pool: 5 virtio-mmio devices besides the 6 replaceable slots
        others = len(consoles) + (vsock is not None) + (balloon is not None) + (rng is not None)
        assume(others + sum(bool(n.vhost) for n in nets) <= 5)
    has_root = bool(drives) or bool(chardevs)
    machine = Machine(mtype, draw(st.booleans()), draw(st.booleans()))
    # a restoring VM has none of what StratoVirt cannot snapshot (snapshot-unsupported)
    restorable = not (
        balloon or memory.path or machine.mem_share or extras.get("vfio")
        or any(n.vhost for n in nets)
    )  # fmt: skip
    return Manifest(
        name=draw(IDENT),
        machine=machine,
        cpu=cpu,
        memory=memory,
        numa=Numa(tuple(nodes), dists),
        boot=Boot(
            "/boot/vmlinux",
            None if has_root and draw(st.booleans()) else "/boot/initrd.img",
            draw(st.sampled_from([None, "console=ttyS0 reboot=k panic=1", "root=/dev/vda rw"])),
        ),
        log=draw(st.sampled_from([None, Log(None), Log("/var/log/vm.log")])) if not daemonize else None,
        daemonize=daemonize,
        pidfile="/run/vm.pid" if daemonize and draw(st.booleans()) else None,
        iothreads=iothreads,
        drives=tuple(drives),
        nets=tuple(nets),
        chardevs=tuple(chardevs),
        serial=serial_dev,
        virtio_serial=virtio_serial,
        consoles=tuple(consoles),
        vsock=vsock,
        balloon=balloon,
        rngs=(rng,) if rng else (),
        trace=draw(st.sampled_from([None, "/etc/trace-events"])),
        seccomp=draw(st.booleans()),
        paused=draw(st.booleans()),
        incoming=draw(st.sampled_from([None, "file:/var/lib/tmpl/vm"])) if restorable else None,
        qmp=("/run/vm.qmp",),
        monitors=monitors,
        **extras,
    )  # fmt: skip


ROUND = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND
@given(models())
def test_import_of_cmdline_is_the_model(m: Manifest) -> None:
    argv = emit_argv(m)
    assert import_argv(argv).manifest == m


@ROUND
@given(models())
def test_cmdline_is_deterministic_and_a_fixpoint(m: Manifest) -> None:
    argv = emit_argv(m)
    assert emit_argv(m) == argv
    again = import_argv(argv).manifest
    assert emit_argv(again) == argv


@st.composite
def ozone_models(draw) -> Manifest:
    m = draw(models(MachineType.MICROVM))
    name = draw(st.sampled_from([None, "jail-" + m.name]))
    oz = Ozone(
        "/usr/bin/stratovirt",
        draw(st.integers(0, 65535)),
        draw(st.integers(0, 65535)),
        name=name,
        capabilities=draw(st.sampled_from([None, ("CAP_NET_ADMIN",), ("CAP_CHOWN", "CAP_SYS_ADMIN")])),
        netns=draw(st.sampled_from([None, "/var/run/netns/vm"])),
        sources=draw(st.sampled_from([(), ("/opt/extra.bin",)])),
        numa=draw(st.sampled_from([None, "0"])),
        cgroup=draw(st.sampled_from([(), (("cpuset.cpus", "0-3"),), (("cpuset.cpus", "4-5"), ("memory.limit_in_bytes", "1000000"))])),
        clean_resource=draw(st.booleans()),
    )  # fmt: skip
    m = dataclasses.replace(m, ozone=oz)
    jail = jail_dir(m)

    def inside(path: str | None) -> str | None:
        return None if path is None else f"{jail}/{path.rsplit('/', 1)[1]}"

    return dataclasses.replace(
        m,
        qmp=(inside(m.qmp[0]),),
        chardevs=tuple(dataclasses.replace(c, path=inside(c.path)) for c in m.chardevs),
        serial=dataclasses.replace(m.serial, path=inside(m.serial.path)) if m.serial else None,
        log=Log(inside(m.log.file)) if m.log else None,
        pidfile=inside(m.pidfile),
    )


@ROUND
@given(ozone_models())
def test_ozone_round_trip(m: Manifest) -> None:
    argv = emit_ozone(m)
    sep = argv.index("--")
    assert all(not a.startswith("/img/") and "/boot/" not in a for a in argv[sep:])
    assert import_ozone(argv).manifest == m
