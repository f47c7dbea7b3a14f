"""Cost of the tinylm task: base pretraining (once), one retrain (finetune on an α-subset + measure),
training tokens/s, the time of a full ground truth of K serial retrains extrapolated from those, and
(``--full``) a full ground truth measured through the harness on a local Ray instance (one retrain
per CPU), as ``tdabench ground-truth`` builds it.

    python benchmarks/tinylm_train.py [--retrains 10] [--threads 1] [--cache-dir DIR] [--full [--subsets 100]]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth, make_masks
from tdabench.toolkit.retrain import train_and_measure
from tdabench.api.seeds import derive_seed
from tdabench.tasks.tinylm import TinyLM, TinyLMConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrains", type=int, default=10, help="retrains to time")
    parser.add_argument("--subsets", type=int, default=100, help="K of the ground truth")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the timed retrains")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory (pretrains anew)")
    parser.add_argument("--full", action="store_true", help="also build a K-subset ground truth on local Ray")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="tinylm-bench-")
    task = TinyLM(TinyLMConfig(cache_dir=cache))
    start = time.perf_counter()
    n_train = task.n_train                                   # pretrains the base (if not cached) and packs the text
    prepare = time.perf_counter() - start
    masks, _ = make_masks(n_train, GroundTruthConfig(), 0)
    train_and_measure(task, masks[0], 0)                     # warm-up
    start = time.perf_counter()
    for k in range(args.retrains):
        train_and_measure(task, masks[k], derive_seed(0, k, 0))
    per_retrain = (time.perf_counter() - start) / args.retrains
    tokens = masks[: args.retrains].sum(1).float().mean().item() * task.config.context_length
    print(f"base pretraining + data preparation: {prepare:.1f} s (cache: {cache})")
    print(f"one retrain (finetune ~{tokens:.0f} tokens + measure {task.n_query} queries): {per_retrain:.2f} s "
          f"= {tokens / per_retrain:,.0f} training tokens/s incl. overhead, {args.threads} threads")
    print(f"ground truth of {args.subsets} retrains, serial: {args.subsets * per_retrain / 60:.1f} min")
    if args.full:
        from tdabench.engine.distributed import RayExecutor

        with tempfile.TemporaryDirectory() as results:
            start = time.perf_counter()
            executor = RayExecutor()
            try:
                build_ground_truth(task, GroundTruthConfig(num_subsets=args.subsets), 0, Path(results), executor)
            finally:
                executor.close()
            seconds = time.perf_counter() - start
        print(f"ground truth of {args.subsets} retrains through the harness (local Ray on {os.cpu_count()} CPUs, "
              f"one retrain each; Ray start included): {seconds:.0f} s")


if __name__ == "__main__":
    main()
