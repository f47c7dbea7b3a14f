"""MAGIC's cost on digits: wall-clock as a multiple of one training run, and memory against the run length.

Reference, timed in this process: one ordinary training run of digits (``Task.train``, torch.optim
Adam), and the same run as pure steps (``Task.unroll``).  Then the metagradient of all 200 queries at
once for branching k = 0 (every state stored), 4 and 2, each as a multiple of the reference.  Last, the
states REPLAY holds at its peak for runs of 5 to 40 epochs: full storage grows like T, the k = 2 tree
like log₂ T.

    python benchmarks/magic_cost.py [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from tdabench.toolkit.metagrad import Replay
from tdabench.tasks.digits import Digits, DigitsConfig
from tdabench.api.unroll import stateless


def seconds(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall-clock times of ``fn()`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def replay(task: Digits, k: int) -> Replay:
    unroll = task.unroll(task.make_model(0), torch.arange(task.n_train), 0)
    template = unroll.model(unroll.initial())
    run = Replay(unroll, k)
    run(lambda p: task.measurement(stateless(template, p), task.query_data()), unroll.ones())
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = Digits(DigitsConfig())
    everything = torch.arange(task.n_train)
    train = seconds(lambda: task.train(task.make_model(0), everything, 0))
    unrolled = seconds(lambda: task.unroll(task.make_model(0), everything, 0).run())
    steps = task.total_steps(task.n_train)
    print(f"digits: {task.n_train} examples, {task.n_query} queries, {steps} Adam steps, {args.threads} thread(s)")
    print(f"reference  one training run (torch.optim):   {train:7.2f} s   1.0x")
    print(f"           the same run as pure steps:       {unrolled:7.2f} s  {unrolled / train:4.1f}x")
    for k in (0, 4, 2):
        run = replay(task, k)
        s = run.stats
        print(f"magic k={k}  all {task.n_query} queries:            {s.seconds:7.2f} s  {s.seconds / train:4.1f}x"
              f"   ({s.forward_steps} steps replayed, {s.peak_stored_states} states held)")
    print("\nstates held at the peak (bytes) against the run length T")
    print("epochs     T   k=0 (every state)     k=2 (tree)")
    for epochs in (5, 10, 20, 40):
        small = Digits(DigitsConfig(epochs=epochs, n_query=10))
        full, tree = replay(small, 0).stats, replay(small, 2).stats
        print(f"{epochs:6d} {full.steps:5d}   {full.peak_stored_states:4d} ({full.peak_stored_bytes / 2**20:5.2f} MiB)"
              f"   {tree.peak_stored_states:4d} ({tree.peak_stored_bytes / 2**20:5.2f} MiB)")


if __name__ == "__main__":
    main()
