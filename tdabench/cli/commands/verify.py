"""``tdabench verify``: what under a results directory is unreadable, inconsistent or stale; with
``--reproduce``, settle each stale row by recomputing one seed (identical numbers: only the
fingerprints are refreshed; different: the row is recomputed)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tdabench.cli.commands.base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--reproduce", action="store_true",
                   help="recompute one seed of each stale row: identical per-query numbers refresh the row's "
                        "fingerprints (numbers and timings kept), different ones recompute the row")
    p.add_argument("--task", default=None, help="with --reproduce: only this task's records")
    p.add_argument("--serial", action="store_true", help="with --reproduce: retrain in-process")
    p.add_argument("--prune", action="store_true",
                   help="delete what was set aside instead of deleted: ground-truth caches built by other code "
                        "(KEY.staleN), unreadable files (NAME.corruptN) and methods' caches made by other code")


def run(args: argparse.Namespace) -> int:
    from tdabench.engine.verify import outdated_caches, prune, set_aside, size_of, verify

    if not args.results_dir.exists():
        raise FileNotFoundError(f"--results-dir {args.results_dir} does not exist")
    if args.prune:
        gone, freed = prune(args.results_dir)
        for path in gone:
            print(f"removed {path}")
        print(f"pruned {len(gone)} set-aside or outdated cache(s) and file(s), {freed / 2**20:.1f} MB freed")
    if args.task and not args.reproduce:
        raise ValueError("--task only goes with --reproduce (verify itself checks every record)")
    if args.reproduce:
        from tdabench.api.registry import TASKS
        from tdabench.engine.reproduce import reproduce

        if args.task:
            TASKS.get(args.task)     # an unknown name fails with the list, before any work
        lines = reproduce(args.results_dir, args.task, "serial" if args.serial else "ray")
        for line in lines:
            print(line)
        if not lines:
            print("nothing stale: every record was made by the current code")
    problems, checked, missing = verify(args.results_dir)
    for problem in problems:
        print(problem)
    if missing:
        print(f"{missing} record(s) without stored scores: reused as they are, but `tdabench evaluate` needs "
              f"`tdabench run --force` to recompute their metrics (score matrices are not committed)")
    aside = set_aside(args.results_dir)
    if aside:
        print(f"{len(aside)} cache(s) and file(s) set aside (KEY.staleN, NAME.corruptN), "
              f"{sum(size_of(p) for p in aside) / 2**20:.1f} MB: `tdabench verify --prune` deletes them")
    outdated = outdated_caches(args.results_dir)
    if outdated:
        print(f"{sum(p.is_dir() for p in outdated)} method cache(s) made by other code, {sum(size_of(p) for p in outdated) / 2**20:.1f} MB: "
              f"no run of the current code reads them; `tdabench verify --prune` deletes them")
    print(f"{checked} records and ground truths checked, {len(problems)} problem(s)"
          + ("" if problems else ": everything would be reused as it is"))
    return 1 if problems else 0


COMMAND = Command("verify", "check records, stored scores and ground-truth caches; say what `run` would recompute "
                            "(--reproduce: settle stale rows by recomputing one seed)", run, add_arguments)
