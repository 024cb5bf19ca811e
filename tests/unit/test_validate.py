"""Semantic rules on the model: one case per rule (warnings included), boundaries, coverage."""

from __future__ import annotations

import os
import re
from dataclasses import replace

import pytest

from launcher import model as m
from launcher.validate import RULES, check_model
from launcher.validate.base import rules_markdown

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
MIB = 1 << 20

BASE = m.Manifest(
    name="vm",
    cpu=m.Cpu(cpus=2),
    memory=m.Memory(size=512 * MIB),
    boot=m.Boot(kernel="/k", initrd="/i", cmdline="console=ttyS0"),
    qmp=("/run/vm.qmp",),
    serial=m.Chardev("serial_chardev", m.ChardevBackend.PTY),
)
Q35 = replace(
    BASE,
    machine=m.Machine(type=m.MachineType.Q35),
    pflash=(m.Pflash(0, "/code.fd", readonly=True),),
)


def pci(slot: int, func: int = 0, bus: str = "pcie.0", mf: bool | None = None) -> m.PciAddress:
    return m.PciAddress(bus, slot, func, mf)


def codes(man: m.Manifest, target: str = "engine", severity: str | None = None) -> set[str]:
    return {i.code for i in check_model(man, target) if severity in (None, i.severity)}


def test_base_manifests_are_clean() -> None:
    assert check_model(BASE) == []
    assert check_model(Q35) == []


# (code, severity, manifest) — one violating manifest per rule; the corpus covers locations.
CASES = [
    ("qmp-missing", "warning", replace(BASE, qmp=())),
    ("iothread-unused", "warning", replace(BASE, iothreads=("io0",))),
    (
        "machine-none-devices",
        "warning",
        replace(BASE, machine=m.Machine(type=m.MachineType.NONE), drives=(m.Drive("d", "/d"),)),
    ),
    (
        "kernel-param-truncated",
        "warning",
        replace(BASE, boot=m.Boot("/k", "/i", "root=PARTUUID=abcd")),
    ),
    ("pflash-readonly", "warning", replace(Q35, pflash=(m.Pflash(0, "/c.fd"),))),
    ("fast-unplug-microvm", "warning", replace(BASE, fast_unplug=True)),
    ("cpu-pmu", "warning", replace(BASE, cpu=m.Cpu(cpus=2, pmu=True))),
    (
        "cpu-sockets-aarch64-microvm",
        "warning",
        replace(BASE, arch=m.Arch.AARCH64, cpu=m.Cpu(cpus=2, sockets=2)),
    ),
    (
        "numa-microvm",
        "warning",
        replace(BASE, numa=m.Numa((m.NumaNode(0, (0, 1), 512 * MIB, (0,), m.NumaPolicy.DEFAULT),))),
    ),
    (
        "numa-cpus-uncovered",
        "warning",
        replace(Q35, numa=m.Numa((m.NumaNode(0, (0,), 512 * MIB, (0,), m.NumaPolicy.DEFAULT),))),
    ),
    (
        "drive-detached",
        "warning",
        replace(BASE, drives=(m.Drive("d", "/d", attached=False, serial="x"),)),
    ),
    (
        "vhost-user-shared-memory",
        "warning",
        replace(
            Q35,
            chardevs=(m.Chardev("vu", m.ChardevBackend.SOCKET, "/run/vu"),),
            nets=(m.Net("n", m.NetType.VHOST_USER, chardev="vu", pci=pci(3)),),
        ),
    ),
    (
        "balloon-vfio",
        "warning",
        replace(
            Q35, balloon=m.Balloon("b", pci=pci(3)), vfio=(m.Vfio("v", pci(4), "0000:1a:00.3"),)
        ),
    ),
    (
        "ozone-numa",
        "warning",
        replace(BASE, ozone=m.Ozone("/s", 1, 1, cgroup=(("cpuset.cpus", "0-1"),))),
    ),
    (
        "net-mac",
        "warning",
        replace(
            BASE,
            nets=(
                m.Net("a", ifname="ta", mac="52:54:00:00:00:01"),
                m.Net("b", ifname="tb", mac="52:54:00:00:00:01"),
            ),
        ),
    ),
    (
        "chardev-options",
        "warning",
        replace(BASE, chardevs=(m.Chardev("c", m.ChardevBackend.PTY, path="/x"),)),
    ),
    ("daemonize-stdio", "warning", replace(BASE, daemonize=True, log=m.Log())),
    ("qmp-missing", "error", replace(BASE, qmp=())),  # with target stratovirt, below
    (  # with target stratovirt, below
        "drive-discard",
        "warning",
        replace(BASE, drives=(m.Drive("d", "/d", discard=m.Discard.UNMAP),)),
    ),
]
STRATOVIRT_ONLY = {("qmp-missing", "error"), ("drive-discard", "warning")}


@pytest.mark.parametrize(("code", "severity", "man"), CASES, ids=[c[0] + "-" + c[1] for c in CASES])
def test_rule_fires(code: str, severity: str, man: m.Manifest) -> None:
    target = "stratovirt" if (code, severity) in STRATOVIRT_ONLY else "engine"
    issues = [i for i in check_model(man, target) if i.code == code]
    assert issues, check_model(man, target)
    assert all(i.severity == severity for i in issues)
    assert all(i.path and i.hint for i in issues)


@pytest.mark.parametrize(
    ("size", "ok"),
    [(128 * MIB, True), (128 * MIB - MIB, False), (512 << 30, True), ((512 << 30) + MIB, False)],
)
def test_memory_range_is_inclusive(size: int, ok: bool) -> None:
    man = replace(BASE, memory=m.Memory(size=size))
    assert ("memory-size-range" not in codes(man)) is ok


@pytest.mark.parametrize(
    ("max_bytes", "period", "ok"),
    [
        (63, 1000, False),
        (64, 1000, True),
        (64, 1001, False),
        (1, 10, True),
        (10**9, 1000, True),
        (10**9 + 1, 1000, False),
    ],
)
def test_rng_rate_boundaries(max_bytes: int, period: int, ok: bool) -> None:
    man = replace(BASE, rngs=(m.Rng("r", max_bytes=max_bytes, period=period),))
    assert ("rng-rate" not in codes(man)) is ok


@pytest.mark.parametrize(("size", "ok"), [(2, False), (4, True), (1024, True), (1536, False)])
def test_blk_queue_size(size: int, ok: bool) -> None:
    man = replace(BASE, drives=(m.Drive("d", "/d", queue_size=size),))
    assert ("queue-size" not in codes(man)) is ok


@pytest.mark.parametrize(
    ("cid", "ok"), [(2, False), (3, True), (2**32 - 2, True), (2**32 - 1, False)]
)
def test_vsock_cid(cid: int, ok: bool) -> None:
    assert ("vsock-cid" not in codes(replace(BASE, vsock=m.Vsock(cid, "v")))) is ok


def test_microvm_irq_pool_counts_consoles_and_vhost_nets() -> None:
    consoles = tuple(m.Console(f"c{i}", f"ch{i}") for i in range(5))
    chardevs = tuple(m.Chardev(f"ch{i}", m.ChardevBackend.PTY) for i in range(5))
    man = replace(BASE, consoles=consoles, chardevs=chardevs)
    assert "microvm-irq-limit" not in codes(man)
    man = replace(man, nets=(m.Net("n", ifname="t", vhost=True),))
    assert "microvm-irq-limit" in codes(man)
    aarch = replace(man, arch=m.Arch.AARCH64)
    assert "microvm-irq-limit" not in codes(aarch)


def test_vhost_nets_do_not_use_net_slots() -> None:
    nets = tuple(m.Net(f"n{i}", ifname=f"t{i}", vhost=True) for i in range(3))
    assert "microvm-net-limit" not in codes(replace(BASE, nets=nets))
    nets = tuple(m.Net(f"n{i}", ifname=f"t{i}") for i in range(3))
    assert "microvm-net-limit" in codes(replace(BASE, nets=nets))


def test_detached_drives_do_not_use_blk_slots() -> None:
    drives = tuple(m.Drive(f"d{i}", f"/d{i}", attached=i < 4) for i in range(6))
    assert "microvm-blk-limit" not in codes(replace(BASE, drives=drives))


def test_multifunction_allows_functions() -> None:
    drives = (m.Drive("a", "/a", pci=pci(3, 0, mf=True)), m.Drive("b", "/b", pci=pci(3, 1)))
    assert check_model(replace(Q35, drives=drives)) == []


def test_virt_has_no_0x1f_reservation() -> None:
    virt = replace(BASE, arch=m.Arch.AARCH64, machine=m.Machine(type=m.MachineType.VIRT))
    man = replace(virt, drives=(m.Drive("a", "/a", pci=pci(0x1F)),))
    assert "pci-slot-reserved" not in codes(man)
    assert "pci-slot-reserved" in codes(replace(Q35, drives=man.drives))


def test_numa_valid_standard_vm() -> None:
    nodes = (
        m.NumaNode(0, (0,), 256 * MIB, (0,), m.NumaPolicy.BIND),
        m.NumaNode(1, (1,), 256 * MIB, (0,), m.NumaPolicy.BIND),
    )
    dists = (m.NumaDistance(0, 1, 20), m.NumaDistance(1, 0, 20), m.NumaDistance(0, 0, 10))
    assert check_model(replace(Q35, numa=m.Numa(nodes, dists))) == []


def test_stratovirt_target_only_changes_qmp() -> None:
    man = replace(BASE, qmp=())
    engine = {i.code: i.severity for i in check_model(man)}
    sv = {i.code: i.severity for i in check_model(man, "stratovirt")}
    assert engine == {"qmp-missing": "warning"} and sv == {"qmp-missing": "error"}
    unmap = replace(BASE, drives=(m.Drive("d", "/d", discard=m.Discard.UNMAP),))
    assert check_model(unmap) == []  # the engine discards; StratoVirt v2.2 has no discard key


def test_monitor_satisfies_qmp() -> None:
    ch = m.Chardev("mon", m.ChardevBackend.SOCKET, "/run/m", server=True, nowait=True)
    man = replace(BASE, qmp=(), chardevs=(ch,), monitors=(m.Monitor("mon", "mon"),))
    assert check_model(man, "stratovirt") == []


def _corpus_codes() -> set[str]:
    out = set()
    for name in os.listdir(os.path.join(HERE, "broken")):
        if name.endswith((".toml", ".yaml")):
            with open(os.path.join(HERE, "broken", name), encoding="utf-8") as f:
                out.add(f.readline().split()[2])
    return out


def _source_codes() -> set[str]:
    root = os.path.join(os.path.dirname(HERE), "launcher")
    used: set[str] = set()
    pattern = re.compile(r'(?:add|warn)\(\s*"([a-z0-9-]+)"|code="([a-z0-9-]+)"')
    for folder in ("validate", "manifest", "commands"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for f in files:
                if f.endswith(".py"):
                    with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                        for a, b in pattern.findall(fh.read()):
                            used.add(a or b)
    return used


def test_every_used_code_is_catalogued_and_every_rule_is_tested() -> None:
    used = _source_codes()
    assert used - set(RULES) == set(), "codes used but missing from RULES"
    tested = _corpus_codes() | {c[0] for c in CASES}
    host = {c for c in RULES if c.startswith("host-")}
    untested = (
        set(RULES)
        - tested
        - host
        - {
            "vm-name-duplicate",
            "cross-duplicate",  # rules across manifests: tests/unit/test_gitops_validate.py
            "cross-depends-on",
            "inventory",
            "key-type",
            "file-unreadable",
            "unknown-format",
            "schema",
            "size-syntax",
            "path-not-utf8",  # needs a folder named in bytes: tests/unit/test_cli_hostile.py
            "internal-error",  # only a bug makes one
        }
    )  # size-syntax: the schema catches it first
    assert untested == set(), f"rules without a broken manifest or unit case: {sorted(untested)}"


def test_docs_list_every_rule() -> None:
    doc = os.path.join(os.path.dirname(HERE), "docs", "validation.md")
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    missing = [c for c in RULES if f"`{c}`" not in text]
    assert missing == []
    assert rules_markdown() in text, "regenerate the table: launcher.validate.base.rules_markdown"
