"""MAGIC's cost on digits: wall-clock as a multiple of one training run, and memory against the run length.

Reference, timed in this process: one ordinary training run of digits (``Task.train``, torch.optim
Adam), and the same run as pure steps (``Task.unroll``).  Then the metagradient of all 200 queries at
once for branching k = 0 (every state stored), 4 and 2, each as a multiple of the reference, with
Adam's update differentiated in closed form (``toolkit/adjoints.py``, the default) and, for k = 0 and
the method's default k = 4, by autograd (what REPLAY did before).  Last, the states REPLAY holds at
its peak for runs of 5 to 40 epochs: full storage grows like T, the k = 2 tree like log₂ T.

    python benchmarks/magic_cost.py [--threads 1] [--readme]
"""
from __future__ import annotations

import argparse
import statistics
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


def replay(task: Digits, k: int, adjoint: str = "auto") -> Replay:
    unroll = task.unroll(task.make_model(0), torch.arange(task.n_train), 0)
    template = unroll.model(unroll.initial())
    run = Replay(unroll, k, adjoint)
    run(lambda p: task.measurement(stateless(template, p), task.query_data()), unroll.ones())
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the metagradient timings")
    parser.add_argument("--readme", action="store_true", help="write results/benchmarks/magic_cost.md and its docs block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = Digits(DigitsConfig())
    everything = torch.arange(task.n_train)
    train = seconds(lambda: task.train(task.make_model(0), everything, 0))
    unrolled = seconds(lambda: task.unroll(task.make_model(0), everything, 0).run())
    steps = task.total_steps(task.n_train)
    lines = [f"digits: {task.n_train} examples, {task.n_query} queries, {steps} Adam steps, {args.threads} thread(s)",
             f"reference  one training run (torch.optim):        {train:7.2f} s   1.0x",
             f"           the same run as pure steps:            {unrolled:7.2f} s  {unrolled / train:4.1f}x"]
    runs = ((0, "autograd"), (0, "closed-form"), (4, "autograd"), (4, "closed-form"), (2, "closed-form"))
    times: dict[tuple[int, str], list[float]] = {r: [] for r in runs}
    stats = {}
    for _ in range(args.rounds):                       # the configurations alternate: each figure a median
        for k, adjoint in runs:
            stats[k, adjoint] = replay(task, k, adjoint).stats
            times[k, adjoint].append(stats[k, adjoint].seconds)
    median = {r: statistics.median(t) for r, t in times.items()}
    for k, adjoint in runs:
        s = stats[k, adjoint]
        lines.append(f"magic k={k}  all {task.n_query} queries, {adjoint + ' adjoint:':22s} {median[k, adjoint]:7.2f} s  "
                     f"{median[k, adjoint] / train:4.1f}x   ({s.forward_steps} steps replayed, {s.peak_stored_states} states held)")
        print(lines[-1], flush=True)
    for k in (0, 4):
        per_round = [a / c for a, c in zip(times[k, "autograd"], times[k, "closed-form"])]
        lines.append(f"k={k}: autograd / closed-form adjoint per round: " + ", ".join(f"{r:.2f}" for r in per_round)
                     + f" (median {statistics.median(per_round):.2f}x)")
    lines += ["", "states held at the peak (bytes) against the run length T", "epochs     T   k=0 (every state)     k=2 (tree)"]
    for epochs in (5, 10, 20, 40):
        small = Digits(DigitsConfig(epochs=epochs, n_query=10))
        full, tree = replay(small, 0).stats, replay(small, 2).stats
        lines.append(f"{epochs:6d} {full.steps:5d}   {full.peak_stored_states:4d} ({full.peak_stored_bytes / 2**20:5.2f} MiB)"
                     f"   {tree.peak_stored_states:4d} ({tree.peak_stored_bytes / 2**20:5.2f} MiB)")
    block = "```\n" + "\n".join(lines) + "\n```"
    print(block)
    if args.readme:
        from _readme import publish

        publish("magic_cost", block, f"`python benchmarks/magic_cost.py --threads {args.threads} --rounds {args.rounds} --readme`")


if __name__ == "__main__":
    main()
