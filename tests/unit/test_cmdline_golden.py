"""The corpus in ``manifests/``: one manifest per guidebook feature with its golden argv.

Each ``<feature>.toml`` has ``<feature>.argv`` (``svlaunch cmdline`` output, one argument per
line) and, with an ``[ozone]`` section, ``<feature>.ozone.argv``. The goldens must match, import
back to the same model, and together cover every option and device key of the guidebook.
Regenerate after an intended change with ``SVLAUNCH_UPDATE_GOLDEN=1 pytest tests/unit/test_cmdline_golden.py``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from launcher.compile.stratovirt.emit import emit_argv
from launcher.compile.stratovirt.importer import import_argv
from launcher.compile.stratovirt.ozone import emit_ozone, import_ozone
from launcher.compile.stratovirt.tokens import STRATOVIRT_OPTIONS, tokenize
from launcher.manifest import load_manifest

CORPUS = Path(__file__).resolve().parents[2] / "manifests"
FEATURES = sorted(p.stem for p in CORPUS.glob("*.toml"))
UPDATE = os.environ.get("SVLAUNCH_UPDATE_GOLDEN") == "1"


def golden(path: Path, argv: list[str]) -> list[str]:
    text = "\n".join(argv) + "\n"
    if UPDATE or not path.exists():
        path.write_text(text)
    return path.read_text().splitlines()


def test_corpus_has_a_manifest_per_feature() -> None:
    assert len(FEATURES) >= 30


@pytest.mark.parametrize("feature", FEATURES)
def test_golden_argv_and_round_trip(feature: str) -> None:
    m = load_manifest(str(CORPUS / f"{feature}.toml"), target="stratovirt")
    argv = ["stratovirt", *emit_argv(m)]
    assert golden(CORPUS / f"{feature}.argv", argv) == argv
    back = import_argv(argv).manifest
    assert back == dataclasses.replace(m, ozone=None)
    if m.ozone is not None:
        oz = ["ozone", *emit_ozone(m)]
        assert golden(CORPUS / f"{feature}.ozone.argv", oz) == oz
        assert import_ozone(oz).manifest == m


def _corpus_usage() -> tuple[set[str], dict[str, set[str]]]:
    """Options used, and for each option or device type the property keys used."""
    options: set[str] = set()
    keys: dict[str, set[str]] = {}
    for feature in FEATURES:
        argv = (CORPUS / f"{feature}.argv").read_text().splitlines()
        for occ in tokenize(argv, STRATOVIRT_OPTIONS).options:
            options.add(occ.name)
            for v in occ.values:
                items = v.text.split(",")
                kind = items[0] if "=" not in items[0] else occ.name
                if occ.name in ("-drive",) and "if=pflash" in items:
                    kind = "pflash"
                keys.setdefault(kind, set()).update(i.split("=")[0] for i in items[1:])
                keys.setdefault(occ.name, set()).update(i.split("=")[0] for i in items if "=" in i)
    return options, keys


GUIDEBOOK_OPTIONS = {
    "-name", "-machine", "-smp", "-cpu", "-m", "-mem-path", "-mem-prealloc", "-numa", "-kernel",
    "-append", "-initrd", "-qmp", "-mon", "-drive", "-netdev", "-chardev", "-device", "-serial",
    "-object", "-global", "-D", "-pidfile", "-daemonize", "-disable-seccomp", "-incoming",
    "-trace", "-S",
}  # fmt: skip
GUIDEBOOK_KEYS = {
    "-machine": {"dump-guest-core", "mem-share", "accel", "usb"},
    "-smp": {"maxcpus", "sockets", "dies", "clusters", "cores", "threads"},
    "-drive": {"id", "file", "readonly", "direct", "aio", "throttling.iops-total"},
    "pflash": {"if", "unit", "readonly"},
    "virtio-blk-device": {"id", "drive", "serial", "queue-size"},
    "virtio-blk-pci": {"id", "drive", "bus", "addr", "multifunction", "num-queues", "bootindex", "iothread"},
    "tap": {"id", "ifname", "fd", "fds", "queues", "vhost", "vhostfd"},
    "vhost-user": {"id", "chardev", "queues"},
    "virtio-net-device": {"id", "netdev", "mac", "iothread"},
    "virtio-net-pci": {"id", "netdev", "mac", "mq", "bus", "addr", "queue-size"},
    "virtio-serial-device": {"id"},
    "virtio-serial-pci": {"id", "bus", "addr"},
    "virtconsole": {"id", "chardev"},
    "vhost-vsock-device": {"id", "guest-cid"},
    "vhost-vsock-pci": {"id", "guest-cid", "vhostfd", "bus", "addr"},
    "virtio-balloon-device": {"deflate-on-oom", "free-page-reporting"},
    "virtio-balloon-pci": {"id", "deflate-on-oom", "bus", "addr", "multifunction"},
    "rng-random": {"id", "filename"},
    "virtio-rng-device": {"rng", "max-bytes", "period"},
    "virtio-rng-pci": {"id", "rng", "bus", "addr"},
    "pcie-root-port": {"id", "port", "bus", "addr", "chassis", "multifunction"},
    "vfio-pci": {"id", "host", "sysfsdev", "bus", "addr"},
    "nec-usb-xhci": {"id", "bus", "addr", "p2", "p3"},
    "usb-kbd": {"id"},
    "usb-tablet": {"id"},
    "memory-backend-ram": {"size", "id", "host-nodes", "policy"},
    "iothread": {"id"},
    "node": {"nodeid", "cpus", "memdev"},
    "dist": {"src", "dst", "val"},
    "socket": {"id", "path", "server", "nowait"},
    "stdio": {"id"},
    "pty": {"id"},
    "file": {"id", "path"},
    "-mon": {"chardev", "id", "mode"},
    "-global": {"pcie-root-port.fast-unplug"},
    "-trace": {"events"},
}  # fmt: skip


def test_corpus_covers_every_guidebook_option_and_key() -> None:
    options, keys = _corpus_usage()
    assert GUIDEBOOK_OPTIONS - options == set()
    missing = {k: sorted(v - keys.get(k, set())) for k, v in GUIDEBOOK_KEYS.items()}
    assert {k: v for k, v in missing.items() if v} == {}
