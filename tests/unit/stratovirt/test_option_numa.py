"""``-object memory-backend-ram``, ``-numa node`` and ``-numa dist`` (``launcher.model_numa``)."""

from __future__ import annotations

import pytest
from svargv import at, imported, manifest, rejected, round_trip, values

from launcher.model import NumaPolicy

NODES = """
[memory]
size = "1G"
[cpu]
cpus = 2
[[numa.nodes]]
id = 0
cpus = "0"
size = "512M"
policy = "bind"
[[numa.nodes]]
id = 1
cpus = [1]
size = "512M"
host-nodes = [0, 1]
[[numa.distances]]
src = 0
dst = 1
val = 20
"""


def test_nodes_and_distances() -> None:
    man = manifest(NODES, q35=True)
    assert values(man, "-object") == [
        "memory-backend-ram,size=512M,id=mem0,host-nodes=0,policy=bind",
        "memory-backend-ram,size=512M,id=mem1,host-nodes=0-1,policy=default",
    ]
    assert values(man, "-numa") == [
        "node,nodeid=0,cpus=0,memdev=mem0",
        "node,nodeid=1,cpus=1,memdev=mem1",
        "dist,src=0,dst=1,val=20",
    ]
    round_trip(man)


def test_zone_without_a_node() -> None:
    man = manifest('[memory]\nsize = "512M"\n[[memory.zones]]\nid = "z"\nsize = "128M"\n')
    assert values(man, "-object") == [
        "memory-backend-ram,size=128M,id=z,host-nodes=0,policy=default"
    ]
    assert imported("-object", "memory-backend-ram,id=z,size=64M,host-nodes=0,policy=interleave").memory.zones[0].policy is NumaPolicy.INTERLEAVE  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("-object", "memory-backend-ram,id=m,size=1G", "'host-nodes' is missing"),
        ("-object", "memory-backend-ram,id=m,size=1G,host-nodes=200,policy=bind", "host node must be < 128"),
        ("-numa", "node,nodeid=0,cpus=0,memdev=nope", "Object for memory-backend-ram nope config not found"),
        ("-numa", "cpu,node-id=0", "Unsupported args for NUMA node"),
    ],
)  # fmt: skip
def test_import_refuses(option: str, value: str, message: str) -> None:
    got, mark = rejected(option, value, q35=True)
    assert message in got and mark.startswith(at(2, q35=True))
