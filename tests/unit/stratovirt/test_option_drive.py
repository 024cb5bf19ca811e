"""``-drive``: the block backend (``if=none``) and firmware flash (``if=pflash``), both ways.

Each optional property comes from a key declared on ``launcher.model.Drive``/``Pflash``
(``sv=("-drive", ...)``); the required ones (``id``, ``file``, ``unit``) and the checks that
span properties are ``emit_drives``/``parse_drive``'s.
"""

from __future__ import annotations

import pytest
from svargv import at, base, imported, manifest, rejected, round_trip, values

from launcher.compile.stratovirt.importer import import_argv
from launcher.model import Aio, Discard


def test_defaults_write_only_id_and_file() -> None:
    man = manifest('[drives.root]\nfile = "/img/root.img"\n')
    assert values(man, "-drive") == ["id=root,file=/img/root.img"]
    round_trip(man)


def test_every_property_in_stratovirt_order() -> None:
    man = manifest(
        '[drives.d]\nfile = "/img/d.img"\nreadonly = true\ndirect = false\naio = "io_uring"\n'
        "iops = 500\n"
    )
    assert values(man, "-drive") == [
        "id=d,file=/img/d.img,readonly=on,direct=off,aio=io_uring,throttling.iops-total=500"
    ]
    round_trip(man)


def test_import_reads_each_property() -> None:
    d = imported("-drive", "id=d,file=/img/d,readonly=on,direct=off,aio=io_uring,throttling.iops-total=7").drives[0]  # fmt: skip
    assert (d.id, d.file, d.readonly, d.direct, d.aio, d.iops) == (
        "d", "/img/d", True, False, Aio.IO_URING, 7,
    )  # fmt: skip
    assert not d.attached  # no -device: a backend for hot plug


def test_discard() -> None:
    """StratoVirt >= 2.3's -drive discard=unmap|ignore (v2.2 has no discard: ignore)."""
    man = manifest('[drives.d]\nfile = "/img/d.img"\ndiscard = "unmap"\n')
    assert values(man, "-drive") == ["id=d,file=/img/d.img,discard=unmap"]
    round_trip(man)
    assert imported("-drive", "id=d,file=/d,discard=unmap").drives[0].discard is Discard.UNMAP
    assert imported("-drive", "id=d,file=/d").drives[0].discard is Discard.IGNORE
    (warning,) = [
        i for i in import_argv([*base(), "-drive", "id=d,file=/d,discard=unmap"]).warnings
    ]
    assert warning.code == "drive-discard" and str(warning.mark) == at(2)
    got, mark = rejected("-drive", "id=d,file=/d,discard=on")
    assert "Invalid discard 'on'" in got and mark == at(2, 14)


@pytest.mark.parametrize(
    ("value", "message", "col"),
    [
        ("id=d,file=/d,aio=off", "Low performance expected", 14),
        ("id=d,file=/d,direct=off,aio=native", "aio=native requires direct=on", 25),
        ("id=d,file=/d,aio=posix", "Invalid aio 'posix'", 14),
        ("id=d,file=/d,format=qcow2", "Only 'raw' format is supported", 14),
        ("id=d,file=/d,throttling.iops-total=1000001", "should be >= 0 and <= 1000000", 14),
        ("id=d,file=/d,readonly=1", "invalid value for 'readonly'", 14),
        ("id=d,file=/d,cache=none", "Invalid parameter 'cache' for '-drive'", 14),
        ("/img.raw,id=d", "Invalid parameter '/img.raw' for '-drive'", 1),
    ],
)
def test_import_refuses(value: str, message: str, col: int) -> None:
    got, mark = rejected("-drive", value)
    assert message in got and mark == at(2, col)


def test_missing_file_is_refused() -> None:
    got, mark = rejected("-drive", "id=d")
    assert "'file' is missing" in got and mark == at(2)


def test_pflash() -> None:
    man = manifest('[[pflash]]\nunit = 1\nfile = "/fw/VARS.fd"\n', q35=True)
    assert values(man, "-drive") == [
        "file=/fw/OVMF_CODE.fd,if=pflash,unit=0,readonly=on",
        "file=/fw/VARS.fd,if=pflash,unit=1",
    ]
    round_trip(man)
    got, mark = rejected("-drive", "file=/fw/x,if=pflash,unit=2", q35=True)
    assert "should be >= 0 and <= 1" in got and mark == at(2, 22, q35=True)
    got, _ = rejected("-drive", "file=/fw/x,if=pflash,unit=0", q35=True)
    assert "pflash unit 0 is given twice" in got
