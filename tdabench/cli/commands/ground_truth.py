"""``tdabench ground-truth``: build (or complete) the ground-truth caches only."""
from __future__ import annotations

import argparse

from tdabench.cli.options import add_common, spec_from_args
from tdabench.cli.commands.base import Command


def run(args: argparse.Namespace) -> int:
    from tdabench.engine.groundtruth import build_ground_truth
    from tdabench.toolkit.lds import noise_ceiling
    from tdabench.engine.spec import LazyExecutor, prepare

    spec = spec_from_args(args, ())
    plan = prepare(spec)
    executor = LazyExecutor(spec)
    try:
        for seed in spec.seeds:
            truth = build_ground_truth(plan.task, plan.gt, seed, spec.results_dir, executor)
            r, k = truth.replicas.shape[:2]
            ceiling = f", LDS noise ceiling {noise_ceiling(truth.replicas):.3f}" if r >= 2 and truth.kind == "subsets" else ""
            print(f"seed {seed}: [{truth.label}] {k} retrained sets × {r} retraining seeds, key {truth.key}{ceiling}")
    finally:
        executor.close()
    return 0


COMMAND = Command("ground-truth", "build (or complete) the ground-truth caches only", run, add_common)
