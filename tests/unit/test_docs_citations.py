"""The repository stands on its own: what code and docs cite is in ``docs/``, and it is there.

Comments cite facts as ``docs/<file>.md, "<heading>"``: the file must exist and the heading must
start one of its headings, so a renamed section breaks this test rather than a reader's trail.
Notes kept outside the repository are never cited.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: notes that live outside the repository; their facts belong in docs/
OUTSIDE = ("../shared", "shared/research", "engine-notes", "stratovirt-spec", "nested-rig.md")
#: ``docs/x.md, "Heading"`` or ``docs/x.md: "Heading"``, possibly wrapped onto the next line
CITATION = re.compile(r'docs/([\w.-]+?\.md)(?:[,:]\s*"([^"\n]+)")?')


def _cited_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "scripts/*", "Makefile", ".ci/*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    here = Path(__file__).resolve()
    return [ROOT / name for name in out if (ROOT / name).is_file() and ROOT / name != here]


@cache
def _headings(doc: str) -> tuple[str, ...]:
    lines = (ROOT / "docs" / doc).read_text().splitlines()
    return tuple(ln.lstrip("#").strip().replace("`", "") for ln in lines if ln.startswith("#"))


def test_nothing_cites_notes_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _cited_files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if any(word in line for word in OUTSIDE)
    ]
    assert not found, "cite docs/ instead:\n" + "\n".join(found)


def test_every_cited_doc_and_heading_exists() -> None:
    broken = []
    for path in _cited_files():
        text = path.read_text(errors="replace")
        for m in CITATION.finditer(text):
            doc, heading = m.group(1), m.group(2)
            where = f"{path.relative_to(ROOT)}: {m.group(0)!r}"
            if not (ROOT / "docs" / doc).is_file():
                broken.append(f"{where}: no docs/{doc}")
            elif heading and not any(h.startswith(heading) for h in _headings(doc)):
                broken.append(f"{where}: docs/{doc} has no heading starting {heading!r}")
    assert not broken, "\n".join(broken)
