"""``tdabench kernel``: a method's train × train matrix (the loss kernel for ``bif``), clustered and
scored against the structure the task knows."""
from __future__ import annotations

import argparse
import logging

from tdabench.cli.options import add_common, fmt, spec_from_args
from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", required=True, help="method name(s), comma-separated (bif: −Cov(ℓ_i, ℓ_j))")


def run(args: argparse.Namespace) -> int:
    from tdabench.studies.kernel import kernel_study

    reports = kernel_study(spec_from_args(args, tuple(m for m in args.method.split(",") if m)))
    for r in reports:
        scores = ", ".join(f"ARI[{k}] {fmt(v)}" for k, v in r["ari"].items()) or "no labels (the task has no kernel_labels)"
        cophenetic = f", cophenetic correlation with the tree {fmt(r['cophenetic'])}" if "cophenetic" in r else ""
        print(f"{r['task']} {r['method']} seed {r['seed']}: {r['n']}×{r['n']} kernel; {scores}{cophenetic}")
        log.info("written %s and %s", r["matrix"], r["heatmap"])
    return 0


COMMAND = Command("kernel", "a method's train × train matrix (the loss kernel), clustered and scored", run, add_arguments)
