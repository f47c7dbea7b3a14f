"""Cost of the tinylm task: base pretraining (once), one retrain (finetune on an α-subset + measure),
training tokens/s, and the extrapolated time of a full ground truth of K serial retrains.

    python benchmarks/tinylm_train.py [--retrains 10] [--threads 2] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tdabench.groundtruth import GroundTruthConfig, derive_seed, make_masks, train_and_measure
from tdabench.tasks.tinylm import TinyLM, TinyLMConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrains", type=int, default=10, help="retrains to time")
    parser.add_argument("--subsets", type=int, default=100, help="K of the ground truth to extrapolate to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory (pretrains anew)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="tinylm-bench-")
    task = TinyLM(TinyLMConfig(cache_dir=cache))
    start = time.perf_counter()
    n_train = task.n_train                                   # pretrains the base (if not cached) and packs the text
    prepare = time.perf_counter() - start
    masks = make_masks(n_train, GroundTruthConfig(), 0)
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


if __name__ == "__main__":
    main()
