"""``tdabench verify``: what under a results directory is unreadable, inconsistent or stale."""
from __future__ import annotations

import argparse
from pathlib import Path

from .base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("results"))


def run(args: argparse.Namespace) -> int:
    from ..verify import verify

    if not args.results_dir.exists():
        raise FileNotFoundError(f"--results-dir {args.results_dir} does not exist")
    problems, checked, missing = verify(args.results_dir)
    for problem in problems:
        print(problem)
    if missing:
        print(f"{missing} record(s) without stored scores: reused as they are, but `tdabench evaluate` needs "
              f"`tdabench run --force` to recompute their metrics (score matrices are not committed)")
    print(f"{checked} records and ground truths checked, {len(problems)} problem(s)"
          + ("" if problems else ": everything would be reused as it is"))
    return 1 if problems else 0


COMMAND = Command("verify", "check records, stored scores and ground-truth caches; say what `run` would recompute",
                  run, add_arguments)
