"""``-qmp unix:PATH,server,nowait`` and ``-mon chardev=ID,id=ID,mode=control``."""

from __future__ import annotations

from svargv import MICROVM_ARGV, manifest, round_trip, values

from launcher.compile.stratovirt.importer import import_argv
from launcher.errors import InvalidInput


def test_qmp() -> None:
    man = manifest()
    assert values(man, "-qmp") == ["unix:/run/vm.qmp,server,nowait"]
    assert man.qmp == ("/run/vm.qmp",)
    round_trip(man)


def test_mon() -> None:
    man = manifest(
        '[chardevs.mon]\nbackend = "socket"\npath = "/run/mon.sock"\nserver = true\n'
        'nowait = true\n[[monitors]]\nchardev = "mon"\nid = "m0"\n'
    )
    assert values(man, "-mon") == ["chardev=mon,id=m0,mode=control"]
    round_trip(man)


def test_import_refuses() -> None:
    no_qmp = MICROVM_ARGV[:-2]
    for value, message in (
        ("tcp:1.2.3.4:5,server,nowait", "Invalid socket path for qmp"),
        ("unix:/run/q,server", "Argument 'nowait' is needed for qmp"),
        ("unix:/run/a:b,server,nowait", "Invalid socket path for qmp"),
    ):
        try:
            import_argv([*no_qmp, "-qmp", value])
        except InvalidInput as exc:
            assert exc.issues[0].message.splitlines()[0] == message
        else:
            raise AssertionError(value)
