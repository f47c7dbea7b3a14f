"""Benchmark output into the docs: the block between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` of the README or a ``docs/`` page is replaced by what a benchmark printed (never
typed by hand; ``tests/test_readme.py`` checks that each block equals its file under ``results/benchmarks/``)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def publish(name: str, table: str, detail: str) -> None:
    """Write ``results/benchmarks/NAME.md`` (``table`` then ``detail``) and put ``table`` into the
    ``bench:NAME`` block of the README or a docs page, which must exist."""
    out = ROOT / "results" / "benchmarks" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table.rstrip("\n") + "\n\n" + detail.rstrip("\n") + "\n")
    marker = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    pages = [p for p in (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))) if marker.search(p.read_text())]
    if not pages:
        raise SystemExit(f"neither README.md nor a docs/ page has a <!-- bench:{name} --> block to fill")
    for page in pages:
        page.write_text(marker.sub(lambda m: m.group(1) + table.rstrip("\n") + "\n" + m.group(2), page.read_text()))
    print(f"wrote {out.relative_to(ROOT)} and the bench:{name} block of {', '.join(str(p.relative_to(ROOT)) for p in pages)}")
