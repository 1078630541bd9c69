"""Every path README.md and docs/*.md point to exists, so the pages cannot rot.

Markdown links are resolved from the page that holds them; a path in a code
span (`benchmarks/offload_demo.py`, `transports/`) may name a file in the
repository, in `src/` or in the package.  Only code-span words that look
like paths are checked: ending in `/` or in a file extension.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
PATHLIKE = re.compile(r"^[\w.][\w.*-]*(?:/[\w.*-]+)*(?:/|\.[a-z]{1,5})$")


def _exists(base: Path, relative: str) -> bool:
    if "*" in relative:
        return any(base.glob(relative))
    return (base / relative).exists()


def _broken(page: Path) -> list[str]:
    text = page.read_text()
    broken = []
    for match in LINK.finditer(text):
        target = match[1]
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(f"link {target}")
    roots = (ROOT, ROOT / "src", ROOT / "src" / "muxio", page.parent)
    for match in CODE.finditer(text):
        for word in match[1].split():
            word = word.strip(",;:()[]\"'")
            if "/" in word and PATHLIKE.match(word) and not any(_exists(r, word) for r in roots):
                broken.append(f"path {word}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_path_a_page_names_exists(page: Path) -> None:
    assert _broken(page) == []


def test_the_check_catches_a_missing_path(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("see [there](nowhere.md) and `nosuch/folder/`; `v/bin/pip` is a command\n")
    assert _broken(page) == ["link nowhere.md", "path nosuch/folder/"]


def test_the_readme_has_no_relative_links_the_package_index_would_break() -> None:
    """README.md is also the package's page on the index, where no repository is around it.

    Its paths are code spans naming files of the source distribution (MANIFEST.in
    carries docs/, benchmarks/, conformance/ and tests/), never relative links.
    """
    relative = [
        m[1]
        for m in LINK.finditer((ROOT / "README.md").read_text())
        if not re.match(r"^[a-z]+:", m[1]) and not m[1].startswith("#")
    ]
    assert relative == []
    manifest = (ROOT / "MANIFEST.in").read_text().split()
    assert {"docs", "benchmarks", "conformance", "tests"} <= set(manifest)
