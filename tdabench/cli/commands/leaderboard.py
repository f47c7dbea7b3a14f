"""``tdabench leaderboard``: render the leaderboard from run records."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="only this task")
    p.add_argument("--format", default="md", choices=("md", "csv", "latex", "json"))
    p.add_argument("--metric", default="lds", help="the metric to rank by (lds, loo, ...)")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--output", type=Path, default=None, help="also write the board to this file")


def run(args: argparse.Namespace) -> int:
    from tdabench.report.leaderboard import leaderboard

    text = leaderboard(args.results_dir, args.task, args.format, args.metric)
    print(text, end="")
    log.info("rendered from the stored records under %s: nothing was run (`tdabench run ... --force` recomputes a "
             "row)", args.results_dir / "runs")
    if args.output:
        args.output.write_text(text)
    return 0


COMMAND = Command("leaderboard", "render the leaderboard from run records", run, add_arguments)
