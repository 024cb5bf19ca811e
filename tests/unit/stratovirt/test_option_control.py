"""``-D``, ``-daemonize``, ``-pidfile``, ``-trace``, ``-disable-seccomp`` and ``-S``."""

from __future__ import annotations

from svargv import imported, manifest, rejected, round_trip

from launcher.compile.stratovirt.emit import emit_argv


def test_both_ways() -> None:
    man = manifest(
        '[log]\nfile = "/var/log/vm.log"\n',
        top='daemonize = true\npidfile = "/run/vm.pid"\ntrace = "/etc/trace-events"\n'
        'seccomp = false\npaused = true\nserial = "pty"',
    )
    argv = emit_argv(man)
    tail = argv[argv.index("-D") :]
    assert tail == ["-D", "/var/log/vm.log", "-daemonize", "-pidfile", "/run/vm.pid", "-trace",
                    "events=/etc/trace-events", "-disable-seccomp", "-S"]  # fmt: skip
    round_trip(man)


def test_import() -> None:
    m = imported("-D", "-S", "-disable-seccomp")
    assert m.log is not None and m.log.file is None and m.paused and not m.seccomp


def test_import_refuses() -> None:
    got, _ = rejected("-daemonize", "on")
    assert "The value 'on' is illegal for argument '-daemonize'" in got
    got, _ = rejected("-trace", "file=/t")
    assert "trace: events file must be set." in got
