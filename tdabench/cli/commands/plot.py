"""``tdabench plot``: LDS, cost and per-query plots from the run records."""
from __future__ import annotations

import argparse
from pathlib import Path

from tdabench.cli.commands.base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="only this task")
    p.add_argument("--results-dir", type=Path, default=Path("results"))


def run(args: argparse.Namespace) -> int:
    from tdabench.report import plots
    from tdabench.report.leaderboard import group, load_records, rank

    records = load_records(args.results_dir, args.task)
    if not records:
        raise FileNotFoundError(f"no run records under {args.results_dir / 'runs'}; run `tdabench run` first")
    rows, folder = rank(group(records)), args.results_dir / "plots"
    for task in sorted({r.task for r in records}):
        regimes = list(dict.fromkeys(r["ground_truth"] for r in rows if r["task"] == task))   # the leaderboard's order
        for regime in regimes:        # one set of plots per ground-truth regime: their LDS are not comparable
            board = [r for r in rows if r["task"] == task and r["ground_truth"] == regime]
            runs = [r for r in records if r.task == task and r.ground_truth.get("label", "") == regime]
            order = list(dict.fromkeys(r["method"] for r in board))
            stem = folder / (task if len(regimes) == 1 else f"{task}-{slug(regime)}")
            label = regime if len(regimes) > 1 else ""
            for path in (plots.lds_bars(board, task, stem.with_name(stem.name + "-lds.png"), label),
                         plots.lds_vs_cost(board, task, stem.with_name(stem.name + "-lds-vs-cost.png"), label),
                         plots.per_query(runs, task, stem.with_name(stem.name + "-per-query.png"), order, label)):
                print(f"wrote {path}")
    for rec in records:
        if "train_loss_trace" in rec.extras:
            print(f"wrote {plots.loss_traces(rec, folder / f'{rec.task}-{rec.method}-seed{rec.seed}-traces.png')}")
    return 0


def slug(regime: str) -> str:
    """A ground-truth label as a file-name part: ``α=0.5 K=200 R=2`` → ``a0.5-K200-R2``."""
    return "-".join(part.replace("α", "a").replace("=", "") for part in regime.split()) or "regime"


COMMAND = Command("plot", "draw LDS, cost and per-query plots from the run records", run, add_arguments)
