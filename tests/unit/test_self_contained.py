"""The repository stands alone: nothing in it reads or cites files outside it.

A clone with nothing beside it must pass the tests, and every note the code cites must be in
``docs/`` (or a wire sample in ``tests/fixtures/payloads/``). Old citations are rewritten by
``scripts/repoint-citations.sh``; this test is what fails when a merge brings a new one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["gateway", "tests", "scripts", "benchmarks", "docs", "monitoring", "asterisk-conf",
           "packaging", "README.md"]
EXEMPT = {Path(__file__).resolve(), (ROOT / "scripts" / "repoint-citations.sh").resolve()}

OUTSIDE = re.compile(r"\.\./shared|shared/reference")
# A note name of the old reference set, not under docs/.
OLD_NOTE = re.compile(r"(?<![\w/.-])(?:whatsapp-calling(?:-2026)?|webrtc-media|asterisk-handoff"
                      r"|DESIGN|STYLE)\.md")
# A payload cited anywhere but tests/fixtures/payloads/.
LOOSE_PAYLOAD = re.compile(r"(?<!fixtures/)(?<![\w-])payloads/[\w.*{},-]+")
DOCS_CITATION = re.compile(r"\bdocs/([\w.-]+\.md)")


def text_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for f in candidates:
            if not f.is_file() or f.resolve() in EXEMPT or "__pycache__" in f.parts:
                continue
            try:
                f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary: nothing to cite
            files.append(f)
    return files


FILES = text_files()


def offending(pattern: re.Pattern[str]) -> list[str]:
    hits = []
    for f in FILES:
        in_docs = f.parent == ROOT / "docs"
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            for m in pattern.finditer(line):
                if in_docs and (ROOT / "docs" / m.group(0)).is_file():
                    continue  # docs/ linking its neighbour by a relative link
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    return hits


def test_scans_the_repository() -> None:
    names = {f.relative_to(ROOT).as_posix() for f in FILES}
    assert "gateway/metrics.py" in names and "docs/meta-calling.md" in names
    assert "tests/fixtures/payloads/webhook-connect-user-initiated.json" in names


@pytest.mark.parametrize("pattern", [OUTSIDE, OLD_NOTE, LOOSE_PAYLOAD],
                         ids=["outside-the-repo", "old-note-name", "payload-not-in-fixtures"])
def test_no_reference_outside_the_repository(pattern: re.Pattern[str]) -> None:
    assert offending(pattern) == [], "run scripts/repoint-citations.sh"


def test_cited_docs_exist() -> None:
    missing = []
    for f in FILES:
        for name in DOCS_CITATION.findall(f.read_text(encoding="utf-8")):
            if not (ROOT / "docs" / name).is_file():
                missing.append(f"{f.relative_to(ROOT)} cites docs/{name}")
    assert missing == []


def test_meta_calling_keeps_its_section_numbers() -> None:
    """Code cites ``docs/meta-calling.md §N``: sections 1-14 must stay where they are."""
    text = (ROOT / "docs" / "meta-calling.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)]
    assert numbers[:14] == list(range(1, 15))


def test_cited_sections_exist() -> None:
    text = (ROOT / "docs" / "meta-calling.md").read_text(encoding="utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)}
    cited = set()
    for f in FILES:
        for m in re.finditer(r"docs/meta-calling\.md §(\d+)(?:-(\d+))?", f.read_text("utf-8")):
            cited.update(int(g) for g in m.groups() if g)
    assert cited and cited <= sections


def test_payload_fixtures_are_valid_json() -> None:
    import json

    payloads = sorted((ROOT / "tests" / "fixtures" / "payloads").glob("*.json"))
    assert len(payloads) >= 30
    for p in payloads:
        json.loads(p.read_bytes())
