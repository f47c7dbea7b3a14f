"""``tdabench board``: settle what is stale and render every table, README excerpt and site page from the records."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tdabench.cli.commands.base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="the board's records (results/runs)")
    p.add_argument("--readme", type=Path, default=Path("README.md"),
                   help="the README whose <!-- board:NAME --> tables are rendered from the records, "
                        "with the docs pages beside it (docs/*.md)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a row is stale or a rendered file would change")
    p.add_argument("--all", action="store_true", dest="every",
                   help="reproduce one seed of every row, stale or not (with --check: say which numbers would change)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rows reproduced at once (processes)")


def run(args: argparse.Namespace) -> int:
    from tdabench.report.board import board

    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: must be at least 1 (processes reproducing rows at once)")
    if not (args.results_dir / "runs").is_dir():
        raise FileNotFoundError(f"--results-dir {args.results_dir}: no runs/ folder of records there")
    start = time.perf_counter()
    lines, changed = board(args.results_dir, args.readme, args.check, args.every, args.jobs)
    for line in lines:
        print(line)
    seconds = time.perf_counter() - start
    print(("nothing changed" if not changed else "changes found" if args.check else "board updated")
          + f" ({seconds:.1f} s)")
    return 1 if changed and args.check else 0


COMMAND = Command("board", "settle stale rows (rerun one seed each) and render the leaderboard, README tables and "
                           "site from the records (--check: write nothing, fail on any change)", run, add_arguments)
