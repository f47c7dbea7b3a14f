"""Benchmark output into the README: the block between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` is replaced by what a benchmark printed (never typed by hand;
``tests/test_readme.py`` checks that each block equals its file under ``results/benchmarks/``)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def publish(name: str, table: str, detail: str) -> None:
    """Write ``results/benchmarks/NAME.md`` (``table`` then ``detail``) and put ``table`` into the
    README's ``bench:NAME`` block, which must exist."""
    out = ROOT / "results" / "benchmarks" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table.rstrip("\n") + "\n\n" + detail.rstrip("\n") + "\n")
    readme = ROOT / "README.md"
    marker = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    text = readme.read_text()
    if not marker.search(text):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> block to fill")
    readme.write_text(marker.sub(lambda m: m.group(1) + table.rstrip("\n") + "\n" + m.group(2), text))
    print(f"wrote {out.relative_to(ROOT)} and the README's bench:{name} block")
