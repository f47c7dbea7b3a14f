"""Harness cost: retrains/s through tdabench's ground-truth builder (local Ray, all cores) against a
bare serial loop calling the same training function, and the time to evaluate LDS at scale.

    python benchmarks/harness_overhead.py [--subsets 200] [--n-train 50000 --n-query 10000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tdabench.engine.distributed import RayExecutor
from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth, make_masks
from tdabench.toolkit.retrain import train_and_measure
from tdabench.api.seeds import derive_seed
from tdabench.toolkit.lds import lds_per_query, spearman_columns
from tdabench.toolkit.meter import Meter
from tdabench.tasks.digits import Digits


def bare_loop(task: Digits, cfg: GroundTruthConfig) -> float:
    """Retrains per second of a plain loop: one process, one torch thread, no caching."""
    torch.set_num_threads(1)
    masks, _ = make_masks(task.n_train, cfg, 0)
    start = time.perf_counter()
    for k in range(cfg.num_subsets):
        train_and_measure(task, masks[k], derive_seed(0, k, 0))
    return cfg.num_subsets / (time.perf_counter() - start)


def harness(task: Digits, cfg: GroundTruthConfig) -> tuple[float, float, float]:
    """Retrains per second through build_ground_truth on local Ray once its workers are up; also
    Ray's start-up seconds and the seconds of a first small build that starts the workers (each
    imports torch and builds the task once: a cost a real build of hundreds of retrains amortises)."""
    start = time.perf_counter()
    executor = RayExecutor()
    startup = time.perf_counter() - start
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            build_ground_truth(task, GroundTruthConfig(num_subsets=2 * (os.cpu_count() or 1)), 1, Path(tmp), executor)
            warmup = time.perf_counter() - start
            start = time.perf_counter()
            build_ground_truth(task, cfg, 0, Path(tmp), executor)
            return cfg.num_subsets / (time.perf_counter() - start), startup, warmup
    finally:
        executor.close()


def column_chunks_lds(scores: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """The reference: the implementation ``lds_per_query`` replaced — float64 products of column chunks
    of the score matrix (each chunk a strided slice converted afresh), ranked by scipy."""
    m = masks.to(torch.float64)
    out = np.empty(scores.shape[1])
    for s in range(0, scores.shape[1], chunk):
        pred = (m @ scores[:, s : s + chunk].to(torch.float64)).numpy()                 # shape: [K, chunk]
        out[s : s + chunk] = spearman_columns(pred, targets[:, s : s + chunk].double().numpy())
    return out


def lds_at_scale(n_train: int, n_query: int, subsets: int) -> tuple[float, float, float, float]:
    """LDS of an [n_train, n_query] score matrix on all cores: seconds and peak RSS (MB) of
    ``lds_per_query``, seconds of the reference, and the largest per-query difference between them."""
    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(n_train, n_query, generator=gen)
    masks = torch.rand(subsets, n_train, generator=gen) < 0.5
    targets = torch.randn(subsets, n_query, generator=gen)
    with Meter() as meter:
        ours = lds_per_query(scores, masks, targets)
    start = time.perf_counter()
    reference = column_chunks_lds(scores, masks, targets)
    return meter.usage.seconds, meter.usage.peak_rss_mb, time.perf_counter() - start, float(np.abs(ours - reference).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsets", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-query", type=int, default=10_000)
    args = parser.parse_args()
    task, cfg = Digits(), GroundTruthConfig(num_subsets=args.subsets)
    task.train_data()
    print(f"machine: {os.cpu_count()} CPU cores; task digits (default config), {args.subsets} retrains each way")
    serial = bare_loop(task, cfg)
    print(f"bare serial loop (reference):        {serial:6.2f} retrains/s")
    ray_rate, startup, warmup = harness(task, cfg)
    print(f"tdabench builder, local Ray:         {ray_rate:6.2f} retrains/s  (not included: Ray start-up "
          f"{startup:.1f} s, starting the workers {warmup:.1f} s)")
    print(f"ratio builder / bare loop:           {ray_rate / serial:6.2f}x")
    seconds, peak, reference, diff = lds_at_scale(args.n_train, args.n_query, 100)
    print(f"LDS of a {args.n_train:,} x {args.n_query:,} score matrix vs 100 subsets, {torch.get_num_threads()} threads:")
    print(f"  column chunks (reference):         {reference:6.2f} s")
    print(f"  row blocks (lds_per_query):         {seconds:6.2f} s  {reference / seconds:.2f}x the reference; peak RSS "
          f"{peak:,.0f} MB (the score matrix alone is {args.n_train * args.n_query * 4 / 2**20:,.0f} MB); "
          f"largest per-query difference {diff:.1e}")


if __name__ == "__main__":
    main()
