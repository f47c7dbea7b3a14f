"""``tdabench evaluate``: recompute metrics from stored scores and cached ground truth."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tdabench.cli.options import names
from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="only this task's records")
    p.add_argument("--metric", default="", help="metric name(s), comma-separated (default: every metric of each record's kind)")
    p.add_argument("--results-dir", type=Path, default=Path("results"))


def run(args: argparse.Namespace) -> int:
    from tdabench.api.registry import METRICS, TASKS
    from tdabench.engine.restore import reevaluate_all

    for name in names(args.metric):         # unknown names fail before any record is read
        METRICS.get(name)
    if args.task:
        TASKS.get(args.task)
    lines, failures = reevaluate_all(args.results_dir, args.task, names(args.metric))
    print("\n".join(lines))
    for failure in failures:
        log.error("not evaluated: %s", failure)
    return 1 if failures else 0


COMMAND = Command("evaluate", "recompute metrics from stored scores and cached ground truth (no method runs)",
                  run, add_arguments)
