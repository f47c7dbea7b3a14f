"""``tdabench sweep``: tune one method's settings on Ray Tune; report the held-out LDS."""
from __future__ import annotations

import argparse
import logging

from tdabench.cli.options import add_common, fmt, spec_from_args
from tdabench.api.config import ConfigError
from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", required=True, help="one method name")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="candidate values of a setting")
    p.add_argument("--samples", type=int, default=0, help="random search with N draws (default: the full grid)")


def run(args: argparse.Namespace) -> int:
    from tdabench.studies.sweep import SweepSpec, parse_grid, sweep

    if "," in args.method:
        raise ConfigError("sweep takes one --method at a time")
    if not args.grid:
        raise ConfigError("sweep needs at least one --grid KEY=V1,V2,...")
    spec = spec_from_args(args, (args.method,))
    if args.samples < 0:
        raise ConfigError(f"--samples {args.samples}: must be 0 (the full grid) or a number of random draws ≥ 1")
    report = sweep(SweepSpec(run=spec, grid=parse_grid(args.grid, args.method), samples=args.samples))
    name = "LDS" if report["objective"] == "lds" else "median pair trajectory r"
    print(f"{'tuning-split ' + name:>30}  config")
    for trial in report["trials"]:
        print(f"{fmt(trial['tune']):>30}  {trial['config']}")
    print(f"chosen on the tuning split: {report['chosen']}; held-out {name} {fmt(report['heldout'])} ± "
          f"{fmt(report['heldout_se'])} over {len(report['seeds'])} seed(s)")
    print(f"report written to {report['path']}; Ray Tune's own output (banner, progress, TensorBoard hint) "
          f"in {report['tune_log']}")
    for failure in report["failures"]:
        log.error("trial failed: %s", failure)
    return 1 if report["failures"] else 0


COMMAND = Command("sweep", "tune a method's settings on Ray Tune; report the held-out LDS (or, for leave-one-out along training, trajectory correlation)", run, add_arguments)
