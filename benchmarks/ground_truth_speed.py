"""Ground-truth speed on digits (or regression with full-batch GD, or hierarchy): the one-model loop
(reference) against batched retraining.

Prints, from one run: retrains/s of the one-model loop on one thread (the reference), of batched
retraining (``Task.train_many``) on one thread, and of the full builder on every core, with the
ratios; then the wall-clock of ``tdabench ground-truth`` for a 1,000-subset ground truth and for a full
leave-one-out ground truth of digits, each from an empty results directory, start-up included.

The reference and the batched rate are measured in alternating rounds and each reported as its
median (with the range), and so is each round's ratio: a shared host's cores vary in speed by 1.5×
from minute to minute, which moves a round's two measurements alike.

    python benchmarks/ground_truth_speed.py [--models 10] [--batch 256] [--rounds 3] [--task regression|hierarchy]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tdabench.engine.distributed import ProcessExecutor
from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth
from tdabench.toolkit.retrain import subset_masks, train_and_measure
from tdabench.api.task import Task
from tdabench.tasks.digits import Digits
from tdabench.tasks.hierarchy import Hierarchy
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
    """Retrains per second through build_ground_truth on a forked worker process per core, each training
    a chunk of models at once (what `run` and `ground-truth` use on a CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_ground_truth(task, GroundTruthConfig(num_subsets=subsets), 0, Path(tmp), ProcessExecutor())
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
    parser.add_argument("--models", type=int, default=10, help="retrains of the one-model reference per round")
    parser.add_argument("--batch", type=int, default=256, help="models trained at once")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the reference and the batched path")
    parser.add_argument("--task", choices=("digits", "regression", "hierarchy"), default="digits",
                        help="regression runs the board's full-batch GD (task.optimizer=gd, 300 steps)")
    args = parser.parse_args()
    tasks = {"digits": Digits, "hierarchy": Hierarchy,
             "regression": lambda: Regression(RegressionConfig(optimizer="gd", steps=300, lr=1.0))}
    task = tasks[args.task]()
    sets = REGRESSION_GD if args.task == "regression" else ()
    masks = subset_masks(task.n_train, 0.5, args.batch, 0)
    torch.set_num_threads(1)
    refs, manys = [], []
    for r in range(args.rounds):
        refs.append(one_model_loop(task, masks[r * args.models : (r + 1) * args.models]))
        manys.append(batched(task, masks))
    ref, many = statistics.median(refs), statistics.median(manys)
    ratios = [m / r for r, m in zip(refs, manys)]                    # each round's pair, measured minutes apart at most
    torch.set_num_threads(os.cpu_count() or 1)
    full = builder(task, 2 * args.batch)
    spread = lambda xs: f"(range {min(xs):.2f}–{max(xs):.2f})"
    print(f"one-model loop, 1 thread (reference):   {ref:8.2f} retrains/s   {spread(refs)}")
    print(f"batched ({args.batch} at once), 1 thread:       {many:8.2f} retrains/s   {many / ref:5.1f}x the reference   {spread(manys)}")
    print(f"  batched / reference in each round:      {', '.join(f'{x:.1f}x' for x in ratios)} (median {statistics.median(ratios):.1f}x)")
    print(f"builder, {os.cpu_count()} worker processes:         {full:8.2f} retrains/s   {full / ref:5.1f}x the reference")
    print(f"tdabench ground-truth, 1,000 subsets:    {cli_seconds(args.task, 'gt.num_subsets=1000', *sets):8.1f} s (start-up included)")
    print(f"tdabench ground-truth, leave-one-out:    {cli_seconds(args.task, 'gt.kind=loo', *sets):8.1f} s "
          f"({task.n_train + 1:,} retrains, start-up included)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tdabench.cli", "ground-truth", "--help"], check=True, capture_output=True)
    print(f"of which start-up (ground-truth --help):  {time.perf_counter() - start:8.1f} s")


if __name__ == "__main__":
    main()
