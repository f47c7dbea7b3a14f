"""The documentation site builds with ``mkdocs build --strict``: a link to a page, an anchor or a repository
file that does not exist fails the build (and so CI), and the README stays a short front page."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs site needs mkdocs (the [docs] or [all] extra)")
REPO = Path(__file__).resolve().parents[1]


def _build(root: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True, timeout=300)


def test_the_docs_site_builds_without_a_broken_link(tmp_path):
    run = _build(REPO, tmp_path / "site")
    assert run.returncode == 0, run.stderr[-3000:]
    for page in ("index.html", "concepts/index.html", "methods/index.html", "architecture/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert (tmp_path / "site" / "results" / "site" / "screenshot.png").is_file()   # a figure a page links to


@pytest.mark.parametrize("link,named", [("[x](nowhere.md)", "nowhere.md"), ("[x](concepts.md#no-such-heading)", "no-such-heading"),
                                        ("![x](../results/no-such-figure.png)", "no-such-figure.png")])
def test_a_broken_link_fails_the_build(tmp_path, link, named):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    (root / "results").symlink_to(REPO / "results")               # the figures the pages link to
    assert _build(root, tmp_path / "clean").returncode == 0           # the copy builds before the broken link
    page = root / "docs" / "index.md"
    page.write_text(page.read_text() + f"\n{link}\n")
    run = _build(root, tmp_path / "site")
    assert run.returncode != 0 and named in run.stderr, run.stderr[-2000:]


def test_the_readme_is_a_short_front_page_that_links_every_docs_page():
    text = (REPO / "README.md").read_text()
    assert text.count("\n") <= 200
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in text, f"the README does not link docs/{page.name}"
