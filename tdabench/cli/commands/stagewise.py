"""``tdabench stagewise``: methods evaluated at checkpoints along training against the ground truth
measured at the same points of every retrain (002's stagewise attribution)."""
from __future__ import annotations

import argparse
import logging

from tdabench.cli.options import add_common, fmt, spec_from_args
from tdabench.api.config import ConfigError
from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", required=True, help="endpoint method name(s), comma-separated")
    p.add_argument("--checkpoints", type=int, default=5,
                   help="points along training (sets gt.checkpoints unless --set gives it; default 5)")
    p.add_argument("--update-board", action="store_true",
                   help="rewrite the committed report results/stagewise/<task>.json (else a run writes <task>-<key>.json)")


def format_stagewise(report: dict) -> str:
    """Rows: method; columns: the metric (mean ± SE over seeds) at each checkpoint's step."""
    rows = report["rows"]
    metric = rows[0]["metric"] if rows else "metric"
    head = ["method"] + [f"step {s}" for s in report["steps"]]
    table = [head]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["step"]: f"{fmt(r['mean'])} ± {fmt(r['se'])}" for r in rows if r["method"] == method}
        table.append([method] + [cells.get(s, "—") for s in report["steps"]])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [f"{report['task']} — ground truth: {report['ground_truth']}; {metric} at each checkpoint"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    for method, pair in report.get("pair_correlation", {}).items():
        lines.append(f"{method}: median Pearson of influence and leave-one-out trajectories over "
                     f"{pair['pairs']} pairs: {fmt(pair['median'])}; peaks within one checkpoint: "
                     f"{fmt(pair['peak_agreement'], 2)}; sign flips matched (of {pair['flip_pairs']}): "
                     f"{fmt(pair['flip_agreement'], 2)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tdabench.studies.stagewise import stagewise

    if args.checkpoints < 2:
        raise ConfigError(f"--checkpoints {args.checkpoints}: a trajectory needs at least 2 points; use 5")
    methods = tuple(m for m in args.method.split(",") if m)
    if not any(s.startswith("gt.checkpoints=") for s in args.sets):
        args.sets = [*args.sets, f"gt.checkpoints={args.checkpoints}"]
    report = stagewise(spec_from_args(args, methods))
    print(format_stagewise(report))
    log.info("written %s and %s", report["json"], report["plot"])
    for failure in report["failures"]:
        log.error("failed: %s", failure)
    return 1 if report["failures"] else 0


COMMAND = Command("stagewise", "evaluate methods at checkpoints along training (LDS(t), LOO trajectories)", run,
                  add_arguments)
