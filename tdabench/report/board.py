"""``tdabench board``: the committed board as one command.

1. **Settle what is stale.** Every stale row of the records is reproduced (``verify --reproduce``: one
   seed recomputed; identical numbers refresh the fingerprints, different ones recompute the row), rows
   in parallel processes.  ``--all`` reproduces every row, stale or not: the whole board as a check.
2. **Render everything derived from the records**: ``results/leaderboard.md``, the result tables of the
   README and of the docs pages beside it (``docs/*.md``; between ``<!-- board:NAME -->`` markers,
   ``board_tables``) and the site
   (``results/site/index.html``).  No figure there is typed by hand.
3. **Write what changed and say so**; ``--check`` writes nothing and exits 1 when anything would change.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tdabench.toolkit.forkpool import fork_map
from tdabench.report.leaderboard import leaderboard, load_records
from tdabench.engine.records import RunResult
from tdabench.engine.reproduce import Row, Settled, current_codes, reproduce_row, row_key, stale

MARKER = re.compile(r"(<!-- board:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(\n?<!-- /board:(?P=name) -->)", re.S)


def render_readme(text: str, records: list[RunResult]) -> str:
    """``text`` with every board block rendered anew from ``records``; an unknown block name fails."""
    from tdabench.report.board_tables import BLOCKS

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"README block {name!r} is not a board table (known: {', '.join(BLOCKS)})")
        return match.group(1) + BLOCKS[name](records) + "\n" + match.group(4).lstrip("\n")
    return MARKER.sub(fill, text)


def readme_blocks(text: str) -> list[str]:
    """The names of the board blocks in a README's text, in order."""
    return [m["name"] for m in MARKER.finditer(text)]


def pages(readme: Optional[Path]) -> list[Path]:
    """The pages whose blocks are rendered from records: the README and the docs pages beside it."""
    if readme is None:
        return []
    docs = sorted((readme.parent / "docs").rglob("*.md")) if (readme.parent / "docs").is_dir() else []
    return [p for p in (readme, *docs) if p.exists()]


@dataclass
class Output:
    """One file derived from the records, and how to make its content."""

    path: Path
    make: Callable[[], str]


def outputs(results_dir: Path, readme: Optional[Path]) -> list[Output]:
    """Every committed file ``board`` renders from the records under ``results_dir``."""
    records = load_records(results_dir)
    out = [Output(results_dir / "leaderboard.md", lambda: leaderboard(results_dir))]
    for page in pages(readme):
        out.append(Output(page, lambda page=page: render_readme(page.read_text(), records)))
    out.append(Output(results_dir / "site" / "index.html", lambda: _site(results_dir)))
    return out


def _site(results_dir: Path) -> str:
    """The site's page, built beside the real one (so its relative links are the same) and read back."""
    from tdabench.report.site import build

    scratch = Path(tempfile.mkdtemp(prefix=".board-site-", dir=results_dir))
    try:
        return build(results_dir, scratch).read_text(encoding="utf-8")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stale_rows(results_dir: Path, every: bool = False) -> list[Row]:
    """The rows whose records are stale (every row with ``every``)."""
    rows: dict[str, Row] = {}
    for path in sorted((results_dir / "runs").rglob("seed*.json")):
        record = RunResult.load(path)
        if every or stale(record, current_codes(record)):
            rows.setdefault(row_key(record), Row()).records[record.seed] = (path, record)
    return list(rows.values())


def settle(rows: list[Row], results_dir: Path, jobs: int, write: bool = True) -> list[Settled]:
    """Reproduce ``rows`` (``jobs`` at a time, in forked processes), the costliest first (by the seconds
    their records took) so that no long row starts last; one result per row, in the order given."""
    from tdabench.engine.pipeline import evaluate

    order = sorted(range(len(rows)), key=lambda i: -_cost(rows[i]))
    done = fork_map(lambda k: reproduce_row(rows[order[k]], results_dir, "serial", evaluate, write), len(rows), jobs)
    return [result for _, result in sorted(zip(order, done), key=lambda pair: pair[0])]


def _cost(row: Row) -> float:
    _, record = row.first
    return record.fit_seconds + record.score_seconds


def board(results_dir: Path, readme: Optional[Path], check: bool = False, every: bool = False,
          jobs: int = 1) -> tuple[list[str], bool]:
    """Settle and render the board; (report lines, whether anything changed — or, with ``check``, would)."""
    rows = stale_rows(results_dir, every)
    if check and not every:      # a stale row is a change to come; --all --check reruns to see which
        settled = [Settled(row.name(), "stale", "stale, made by code that has changed since; "
                                                      "`tdabench board` reruns one seed to settle it") for row in rows]
    else:
        settled = settle(rows, results_dir, jobs, write=not check)
    lines = [str(s) for s in settled]
    changed = any(s.state != "identical" for s in settled)
    for output in outputs(results_dir, readme):
        new = output.make()
        old = output.path.read_text(encoding="utf-8") if output.path.exists() else None
        if new != old:
            changed = True
            lines.append(f"{'would rewrite' if check else 'rewrote'} {output.path}")
            if not check:
                output.path.parent.mkdir(parents=True, exist_ok=True)
                output.path.write_text(new, encoding="utf-8")
    return lines, changed
