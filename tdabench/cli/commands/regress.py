"""``tdabench regress``: CI check; rerun committed settings and compare with committed baselines."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tdabench.cli.commands.base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baselines", type=Path, default=Path("results/baselines/regress.json"))
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--update-baselines", action="store_true", help="rewrite the baselines with this run's numbers")
    p.add_argument("--serial", action="store_true", help="retrain in this process without Ray")


def run(args: argparse.Namespace) -> int:
    from tdabench.studies.baseline_check import regress

    report, failures = regress(args.baselines, args.results_dir, args.update_baselines,
                               "serial" if args.serial else "ray")
    print("\n".join(report))
    for failure in failures:
        print(f"REGRESSION: {failure}", file=sys.stderr)
    print(f"{len(report)} checks, {len(failures)} failures", file=sys.stderr)
    return 1 if failures else 0


COMMAND = Command("regress", "CI check: rerun committed settings, compare with committed baselines", run, add_arguments)
