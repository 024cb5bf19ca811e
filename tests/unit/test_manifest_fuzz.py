"""Hypothesis: no input makes loading crash; it either loads or returns located issues."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.manifest import dump_manifest, load_text
from launcher.manifest.schema import schema
from launcher.manifest.tomlw import dumps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = [
    os.path.join(ROOT, "examples", f) for f in sorted(os.listdir(os.path.join(ROOT, "examples")))
]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


TEXTS = [(_read(p), "toml" if p.endswith(".toml") else "yaml", p) for p in EXAMPLES]


def _keys(s: dict, out: set[str]) -> set[str]:
    for k, v in s.get("properties", {}).items():
        out.add(k)
        _keys(v, out)
    for key in ("additionalProperties", "items"):
        if isinstance(s.get(key), dict):
            _keys(s[key], out)
    for sub in s.get("anyOf", []):
        _keys(sub, out)
    return out


VOCAB = sorted(_keys(schema(), set()))
KEYS = st.one_of(st.sampled_from(VOCAB), st.text(min_size=1, max_size=8))
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.sampled_from(
        [
            "512M",
            "1G",
            "0-3",
            "0x3",
            "0x3.0x1",
            "stdio",
            "q35",
            "microvm",
            "tap",
            "socket",
            "52:54:00:12:34:56",
            "/run/x.qmp",
            "native",
            "bind",
        ]
    ),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)
    ),
    max_leaves=25,
)
DOCS = st.dictionaries(KEYS, TREES, max_size=8).map(lambda d: {"name": "vm", **d})


def _check(text: str, fmt: str) -> None:
    manifest, issues = load_text(text, fmt, "/tmp/fuzz/vm." + fmt)
    if manifest is None:
        assert any(i.is_error for i in issues)
    for i in issues:
        assert i.mark is not None and i.code and i.message


def _toml_safe(v: object) -> bool:
    if isinstance(v, list):
        # TOML arrays may mix types since 1.0, but tomlw writes lists of tables specially
        return all(_toml_safe(x) for x in v)
    if isinstance(v, dict):
        return all(_toml_safe(x) for x in v.values())
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_random_trees_yaml(doc: dict) -> None:
    _check(yaml.safe_dump(doc, sort_keys=False), "yaml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_random_trees_toml(doc: dict) -> None:
    try:
        text = dumps(doc)
    except TypeError:
        return
    _check(text, "toml")


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.integers(0, 10_000),
        st.sampled_from([*list("=[]{}\"',.:-#\n \t0xGM"), "[[", "]]", '"""', "- ", ": "]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEXTS), MUTATIONS)
def test_mutated_examples(sample: tuple[str, str, str], edits: list) -> None:
    text, fmt, _ = sample
    for op, pos, s in edits:
        pos %= len(text) + 1
        if op == "insert":
            text = text[:pos] + s + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + len(s) :]
        else:
            text = text[:pos] + s + text[pos + 1 :]
    _check(text, fmt)


@settings(max_examples=100, deadline=None)
@given(
    cpus=st.integers(1, 8),
    mem=st.sampled_from(["128M", "512M", "1G", "3G"]),
    qsize=st.sampled_from([4, 64, 256, 1024]),
    ro=st.booleans(),
    fmt=st.sampled_from(["toml", "yaml"]),
)
def test_valid_manifests_round_trip(cpus: int, mem: str, qsize: int, ro: bool, fmt: str) -> None:
    text = (
        f'name = "rt"\nqmp = "/run/rt.qmp"\n[cpu]\ncpus = {cpus}\n[memory]\nsize = "{mem}"\n'
        f'[boot]\nkernel = "k"\n[drives.d]\nfile = "d.img"\nqueue-size = {qsize}\n'
        f"readonly = {'true' if ro else 'false'}\n"
    )
    man, issues = load_text(text, "toml", "/tmp/rt/vm.toml")
    assert man is not None, issues
    again, issues = load_text(dump_manifest(man, fmt), fmt, "/tmp/rt/vm." + fmt)
    assert again == man, issues
