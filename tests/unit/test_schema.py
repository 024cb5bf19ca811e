"""The JSON Schema: in sync with its generator, valid draft 2020-12, strict, documented."""

from __future__ import annotations

import io
import json
import os
import tomllib
from contextlib import redirect_stdout

import jsonschema
import pytest
import yaml

from launcher.cli import main
from launcher.manifest.schemagen import build_schema, markdown_reference, schema_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _objects(s: dict, path: str = "$"):
    if s.get("type") == "object" or "properties" in s:
        yield path, s
    for k, v in s.get("properties", {}).items():
        yield from _objects(v, f"{path}.{k}")
    for key in ("additionalProperties", "items"):
        if isinstance(s.get(key), dict):
            yield from _objects(s[key], f"{path}.{key}")
    for i, sub in enumerate(s.get("anyOf", [])):
        yield from _objects(sub, f"{path}.anyOf[{i}]")


def test_file_matches_generator() -> None:
    with open(os.path.join(ROOT, "schema", "svlaunch.schema.json"), encoding="utf-8") as f:
        assert f.read() == schema_json(), (
            "run: python -m launcher.manifest.schemagen > schema/svlaunch.schema.json"
        )


def test_schema_is_valid_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(build_schema())


def test_every_object_is_closed_and_every_key_described() -> None:
    for path, obj in _objects(build_schema()):
        if "properties" in obj:
            assert obj.get("additionalProperties") is False, path
            for key, sub in obj["properties"].items():
                assert sub.get("description"), f"{path}.{key} has no description"


def test_docs_reference_is_current() -> None:
    with open(os.path.join(ROOT, "docs", "manifest.md"), encoding="utf-8") as f:
        assert markdown_reference() in f.read()


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "examples"))))
def test_examples_validate_against_the_raw_schema(name: str) -> None:
    path = os.path.join(ROOT, "examples", name)
    with open(path, "rb") as f:
        data = tomllib.load(f) if name.endswith(".toml") else yaml.safe_load(f)
    jsonschema.Draft202012Validator(build_schema()).validate(data)


def test_svlaunch_schema_prints_it() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["schema"]) == 0
    assert json.loads(out.getvalue())["$schema"].endswith("2020-12/schema")
