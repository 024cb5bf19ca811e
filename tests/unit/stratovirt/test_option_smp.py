"""``-smp`` and ``-cpu``, both ways (keys on ``launcher.model.Cpu``)."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values


def test_one_cpu_writes_nothing() -> None:
    assert values(manifest(), "-smp") == [] and values(manifest(), "-cpu") == []


def test_topology() -> None:
    man = manifest("[cpu]\ncpus = 4\nsockets = 2\ncores = 2\nthreads = 1\n")
    assert values(man, "-smp") == ["4,sockets=2,cores=2,threads=1"]
    round_trip(man)


def test_cpu_model_and_pmu() -> None:
    man = manifest('[cpu]\nmodel = "host"\n')
    assert values(man, "-cpu") == ["host"]
    round_trip(man)
    assert imported("-cpu", "host,pmu=off").cpu.pmu is False


def test_import() -> None:
    c = imported("-smp", "cpus=2,maxcpus=4").cpu
    assert (c.cpus, c.maxcpus) == (2, 4)


@pytest.mark.parametrize(
    ("option", "value", "message", "col"),
    [
        ("-smp", "CPUS=2", "Invalid parameter 'CPUS' for '-smp'", 1),
        ("-smp", "2,cores=2,cores=1", "Input field 'cores' in -smp is offered more than once", 11),
        ("-smp", "255", "cpus must be within [1, 254]", 1),
        ("-cpu", "host,pmu=yes", "Invalid PMU option 'yes'", 6),
    ],
)
def test_import_refuses(option: str, value: str, message: str, col: int) -> None:
    got, mark = rejected(option, value)
    assert message in got and mark == at(2, col)
