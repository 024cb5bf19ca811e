"""The fast shape checker and ``jsonschema`` agree, error for error, on every document we have.

``launcher.manifest.shape`` replaces ``jsonschema`` on the CLI's path (start-up time); these
tests hold it to the reference: the same valid/invalid verdict, the same errors (keyword, key
path, value), and the same worded issues, over the broken corpus, the examples, the manifests/
corpus, the benchmark's generated manifests and hypothesis documents drawn from the schema.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import tempfile
from functools import lru_cache
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.names import VM_NAME_PATTERN
from launcher.manifest.schema import check_shape, issues_from_errors, schema
from launcher.manifest.schemagen import ADDR_PATTERN, INTLIST_PATTERN, SIZE_PATTERN
from launcher.manifest.shape import ShapeError, compile_schema, iter_errors
from launcher.manifest.sourcemap import format_path
from launcher.manifest.toml_loader import load_toml
from launcher.manifest.yaml_loader import load_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = sorted(
    p
    for pattern in ("tests/broken/*", "examples/*", "manifests/*")
    for p in glob.glob(os.path.join(ROOT, pattern))
    if p.endswith((".toml", ".yaml", ".yml"))
)


@lru_cache(maxsize=1)
def _reference() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


@lru_cache(maxsize=1)
def _fast() -> Any:
    return compile_schema(schema(), eager=True)


def _key(err: Any) -> tuple[str, str, str, str]:
    return (format_path(err.absolute_path), err.validator, repr(err.instance), str(err.message))


def assert_agree(data: Any) -> list[Any]:
    """Both checkers on ``data``: same errors (as a multiset) and the same issues, in order."""
    ref = list(_reference().iter_errors(data))
    fast = iter_errors(_fast(), data)
    assert sorted(map(_key, fast)) == sorted(map(_key, ref))
    assert check_shape(data) == issues_from_errors(ref)
    return ref


def _parse(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    data, _, issues = (load_toml if path.endswith(".toml") else load_yaml)(text, path)
    return None if issues else data


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 200
    assert any("/examples/" in p for p in CORPUS)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: os.path.relpath(p, ROOT))
def test_corpus_agrees(path: str) -> None:
    data = _parse(path)
    if data is not None:
        assert_agree(data)


def test_generated_bench_manifests_agree_and_are_valid() -> None:
    spec = importlib.util.spec_from_file_location("vm_bench", f"{ROOT}/bench/validate_many.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with tempfile.TemporaryDirectory() as tmp:
        bench.generate(tmp, 8)
        for name in sorted(os.listdir(tmp)):
            assert assert_agree(_parse(os.path.join(tmp, name))) == []


def test_the_corpus_exercises_every_error_kind() -> None:
    """The broken corpus alone reaches each keyword the converter words."""
    seen = set()
    for path in CORPUS:
        data = _parse(path)
        if data is not None:
            seen |= {e.validator for e in iter_errors(_fast(), data)}
    assert {"additionalProperties", "required", "type", "enum", "anyOf", "minimum"} <= seen


def test_unknown_keywords_are_refused() -> None:
    with pytest.raises(ValueError, match="uniqueItems"):
        compile_schema({"type": "array", "uniqueItems": True})
    nested = {"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}
    with pytest.raises(ValueError, match="format"):
        compile_schema(nested, eager=True)
    lazy = compile_schema(nested)  # the CLI's way: compiled when "a" is first seen
    with pytest.raises(ValueError, match="format"):
        iter_errors(lazy, {"a": "x"})


def test_lazy_and_eager_compilation_agree() -> None:
    for path in CORPUS[::3]:
        data = _parse(path)
        if data is not None:
            lazy = compile_schema(schema())
            assert list(map(_key, iter_errors(lazy, data))) == list(
                map(_key, iter_errors(_fast(), data))
            )


def test_error_records_carry_the_reference_fields() -> None:
    (err,) = iter_errors(_fast(), {"name": "vm", "cpu": {"cpus": -1}})
    assert isinstance(err, ShapeError)
    assert (err.validator, err.validator_value, err.instance) == ("minimum", 0, -1)
    assert tuple(err.absolute_path) == ("cpu", "cpus")
    assert err.message == "-1 is less than the minimum of 0"


# -- documents drawn from the schema, then bent ----------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, -1, 1.0, 2.5, -0.5, float("nan")]),
    st.text(max_size=6),
    st.sampled_from(["", " 512 M ", "1GiB", "0-3", "3-1", "[0, 2]", "0x1f.7", "0X3", "q35"]),
)
JUNK = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=6,
)
EXAMPLES = {
    SIZE_PATTERN: ["512M", "1G", "4096", "1536MiB", "2 KiB", "7B", "12X"],
    INTLIST_PATTERN: ["0-3", "[0,1]", "0:2", " 1 - 2 ", "a-b", "0-"],
    ADDR_PATTERN: ["0x3", "0x3.0x1", "10", "0x1e.7", "3.", "x3"],
    VM_NAME_PATTERN: ["vm", "web-1.a_b+c", "vm\n", "-vm", "a/b", "../x", "\x1b[2J", "v" * 65],
}


def from_schema(s: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Mostly well-formed values for ``s``, sometimes junk, unknown keys or missing ones."""
    if "anyOf" in s:
        good = st.one_of([from_schema(sub, depth + 1) for sub in s["anyOf"]])
    elif "enum" in s:
        good = st.one_of(st.sampled_from(s["enum"]), st.sampled_from(["", "Q35", "tapp", "none"]))
    elif s.get("type") == "object":
        props = s.get("properties", {})
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):  # a table keyed by id
            ids = st.sampled_from(["a", "rootfs", "pcie.1", "", "x y"])
            good = st.dictionaries(ids, from_schema(extra, depth + 1), max_size=2)
        elif props and depth < 4:
            names = sorted(props)
            required = list(s.get("required", ()))
            chosen = st.lists(st.sampled_from(names), max_size=4, unique=True)
            unknown = st.lists(st.sampled_from(["nmae", "tyep", "x", "queue_size"]), max_size=1)

            @st.composite
            def obj(draw: Any, chosen: Any = chosen, unknown: Any = unknown) -> dict[str, Any]:
                keys = draw(chosen)
                if draw(st.booleans()):
                    keys = [*required, *(k for k in keys if k not in required)]
                out = {k: draw(from_schema(props[k], depth + 1)) for k in keys}
                for k in draw(unknown):
                    out[k] = draw(SCALARS)
                return out

            good = obj()
        else:
            good = st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
    elif s.get("type") == "array":
        good = st.lists(from_schema(s.get("items", {}), depth + 1), max_size=2)
    elif s.get("type") == "integer":
        good = st.one_of(st.integers(-3, 300), st.sampled_from([0, 1.0, True]))
    elif s.get("type") == "string" and "pattern" in s:
        good = st.sampled_from(EXAMPLES[s["pattern"]])
    elif s.get("type") == "string":
        good = st.one_of(st.text(max_size=6), st.just(""))
    elif s.get("type") == "boolean":
        good = st.one_of(st.booleans(), st.sampled_from([0, "true"]))
    else:
        good = SCALARS
    return st.one_of(good, good, good, JUNK)


DOCS = from_schema(schema())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_generated_documents_agree(doc: Any) -> None:
    assert_agree(doc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JUNK)
def test_junk_agrees(doc: Any) -> None:
    assert_agree(doc)


def test_each_missing_key_is_reported_once() -> None:
    # jsonschema yields one "required" error per missing key; each used to word every missing key
    issues = check_shape({"name": "vm", "pflash": [{}]})
    assert [(i.code, i.message) for i in issues] == [
        ("missing-key", "missing required key 'unit' in pflash[0]"),
        ("missing-key", "missing required key 'file' in pflash[0]"),
    ]


def test_the_cli_path_does_not_import_jsonschema() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from launcher.manifest import load_text; "
        "m, i = load_text('name = \"vm\"\\n[cpu]\\ncpus = -1\\n', 'toml'); "
        "assert m is None and i[0].code == 'range', i; "
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('jsonschema', 'difflib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("text", "code", "path", "message"),
    [
        ('serial = {backend = "socket", paht = "/x"}', "unknown-key", "serial.paht", "'paht'"),
        ('serial = {path = "/x"}', "missing-key", "serial", "'backend'"),
        ('log = {fiel = "x"}', "unknown-key", "log.fiel", "'fiel'"),
        ('qmp = ["/a", 3]', "wrong-type", "qmp[1]", "expected a string, got an integer 3"),
        ("[memory]\nsize = -1", "range", "memory.size", "value -1 must be >= 0"),
        ('[drives.d]\nfile = "d"\naddr = -3', "range", "drives.d.addr", "-3 must be >= 0"),
        ('serial = "ttyS0"', "wrong-type", "serial", "got a string 'ttyS0'"),
        ('[memory]\nsize = "512 megs"', "bad-syntax", "memory.size", "'512 megs'"),
    ],
)
def test_shorthand_errors_name_the_inner_problem(
    text: str, code: str, path: str, message: str
) -> None:
    """A table, list or number under an ``anyOf`` shorthand is checked against the one branch
    of its type, so the error is the real one (unknown key, item type, range)."""
    from launcher.manifest import load_text

    _, issues = load_text(f'name = "vm"\n{text}\n', "toml", "/tmp/vm.toml")
    assert [(i.code, i.path) for i in issues] == [(code, path)], issues
    assert message in issues[0].message and issues[0].mark is not None
