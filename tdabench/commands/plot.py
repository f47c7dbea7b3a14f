"""``tdabench plot``: LDS, cost and per-query plots from the run records."""
from __future__ import annotations

import argparse
from pathlib import Path

from .base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="only this task")
    p.add_argument("--results-dir", type=Path, default=Path("results"))


def run(args: argparse.Namespace) -> int:
    from .. import plots
    from ..leaderboard import group, load_records, rank

    records = load_records(args.results_dir, args.task)
    if not records:
        raise FileNotFoundError(f"no run records under {args.results_dir / 'runs'}; run `tdabench run` first")
    rows, folder = rank(group(records)), args.results_dir / "plots"
    for task in sorted({r.task for r in records}):
        order = list(dict.fromkeys(r["method"] for r in rows if r["task"] == task))   # the leaderboard's
        for path in (plots.lds_bars(rows, task, folder / f"{task}-lds.png"),
                     plots.lds_vs_cost(rows, task, folder / f"{task}-lds-vs-cost.png"),
                     plots.per_query(records, task, folder / f"{task}-per-query.png", order)):
            print(f"wrote {path}")
    for rec in records:
        if "train_loss_trace" in rec.extras:
            print(f"wrote {plots.loss_traces(rec, folder / f'{rec.task}-{rec.method}-seed{rec.seed}-traces.png')}")
    return 0


COMMAND = Command("plot", "draw LDS, cost and per-query plots from the run records", run, add_arguments)
