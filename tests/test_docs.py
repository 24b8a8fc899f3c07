"""The guides cover every CLI verb, and every relative link in the Markdown docs resolves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from prostate_vq.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATED = {"cli.md"}  # written by tools/gen_cli_docs.py: it lists every verb by construction
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _verbs() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def _guides() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p.name not in GENERATED)


def _markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def test_the_parser_has_verbs():
    assert {"train", "evaluate", "train-prior", "sample"} <= set(_verbs())


@pytest.mark.parametrize("verb", _verbs())
def test_every_verb_has_a_guide(verb):
    pattern = re.compile(rf"prostate-vq {re.escape(verb)}(?![\w-])")
    where = [p.name for p in _guides() if pattern.search(p.read_text(encoding="utf-8"))]
    assert where, f"no guide in docs/ (other than cli.md) mentions `prostate-vq {verb}`"


def _relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))  # links inside code blocks are not links
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, https:, mailto: and in-page anchors
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    if not path.exists():
        pytest.skip(f"{path.name} is not there")
    missing = [t for t in _relative_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_link_parser_finds_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('[a](a.md) ![b](img/b.png "t") [c](https://x.org) [d](#top) [e](e.md#part)\n```\n[f](not-a-link.md)\n```\n')
    assert _relative_links(page) == ["a.md", "img/b.png", "e.md"]


def test_docs_index_lists_every_guide_and_notebook():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\(([^)]+)\)", index))
    expected = {p.name for p in DOCS.glob("*.md") if p.name != "README.md"} | {p.name for p in DOCS.glob("*.ipynb")}
    assert expected <= listed, f"docs/README.md does not link {sorted(expected - listed)}"


def test_quantizer_table_is_generated_from_the_registry():
    """docs/models.md's quantizer table is tools/gen_quantizer_docs.py's output; a stale one fails here."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_quantizer_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_quantizer_docs as gen
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    stale = text.replace("| `fsq` | FSQ (Mentzer 2023)", "| `fsq-old` | FSQ (Mentzer 2023)")
    assert gen.render(stale) == text != stale  # a hand edit is overwritten, so --check reports it
