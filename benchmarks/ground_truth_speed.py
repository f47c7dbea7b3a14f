"""Ground-truth speed on digits (or regression with full-batch GD): the one-model loop (reference)
against batched retraining.

Prints, from one run: retrains/s of the one-model loop on one thread (the reference), of batched
retraining (``Task.train_many``) on one thread, and of the full builder on every core, with the
ratios; then the wall-clock of ``tdabench ground-truth`` for a 1,000-subset ground truth and for a full
leave-one-out ground truth of digits, each from an empty results directory, start-up included.

    python benchmarks/ground_truth_speed.py [--models 20] [--batch 256] [--task regression]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tdabench.distributed import SerialExecutor
from tdabench.groundtruth import GroundTruthConfig, build_ground_truth
from tdabench.retrain import subset_masks, train_and_measure
from tdabench.task import Task
from tdabench.tasks.digits import Digits
from tdabench.tasks.regression import Regression, RegressionConfig

# the committed board's regression settings: full-batch GD, which trains many models at once
REGRESSION_GD = ("task.optimizer=gd", "task.steps=300", "task.lr=1.0")


def one_model_loop(task: Task, masks: torch.Tensor) -> float:
    """Retrains per second, one model at a time (after one warm-up retrain)."""
    train_and_measure(task, masks[0], 0)
    start = time.perf_counter()
    for k in range(masks.shape[0]):
        train_and_measure(task, masks[k], k)
    return masks.shape[0] / (time.perf_counter() - start)


def batched(task: Task, masks: torch.Tensor) -> float:
    task.train_many(masks[:2], [0, 1])                                     # warm-up
    start = time.perf_counter()
    task.train_many(masks, list(range(masks.shape[0])))
    return masks.shape[0] / (time.perf_counter() - start)


def builder(task: Task, subsets: int) -> float:
    """Retrains per second through build_ground_truth, in-process on every core (what `run` uses)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_ground_truth(task, GroundTruthConfig(num_subsets=subsets), 0, Path(tmp), SerialExecutor(os.cpu_count()))
        return subsets / (time.perf_counter() - start)


def cli_seconds(task: str, *sets: str) -> float:
    """Wall-clock of `tdabench ground-truth --task T --seeds 1` in a fresh process and results dir."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tdabench.cli", "ground-truth", "--task", task, "--seeds", "1",
               "--results-dir", tmp, *(x for s in sets for x in ("--set", s))]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20, help="retrains of the one-model reference")
    parser.add_argument("--batch", type=int, default=256, help="models trained at once")
    parser.add_argument("--task", choices=("digits", "regression"), default="digits",
                        help="regression runs the board's full-batch GD (task.optimizer=gd, 300 steps)")
    args = parser.parse_args()
    task = Digits() if args.task == "digits" else Regression(RegressionConfig(optimizer="gd", steps=300, lr=1.0))
    sets = REGRESSION_GD if args.task == "regression" else ()
    masks = subset_masks(task.n_train, 0.5, args.batch, 0)
    torch.set_num_threads(1)
    ref = one_model_loop(task, masks[: args.models])
    many = batched(task, masks)
    torch.set_num_threads(os.cpu_count() or 1)
    full = builder(task, 2 * args.batch)
    print(f"one-model loop, 1 thread (reference):   {ref:8.2f} retrains/s")
    print(f"batched ({args.batch} at once), 1 thread:       {many:8.2f} retrains/s   {many / ref:5.1f}x the reference")
    print(f"builder, {os.cpu_count()} threads in-process:        {full:8.2f} retrains/s   {full / ref:5.1f}x the reference")
    print(f"tdabench ground-truth, 1,000 subsets:    {cli_seconds(args.task, 'gt.num_subsets=1000', *sets):8.1f} s (start-up included)")
    print(f"tdabench ground-truth, leave-one-out:    {cli_seconds(args.task, 'gt.kind=loo', *sets):8.1f} s "
          f"({task.n_train + 1:,} retrains, start-up included)")


if __name__ == "__main__":
    main()
