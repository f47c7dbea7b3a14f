"""Does a task's training end at the same model whatever the intra-op thread count?  Trains the task's
model for one seed on its whole attribution set with 1, then 2, then 1 thread in this process and prints
each model's parameter checksum (sum of |θ|) and whether the runs are bitwise equal.  On MNIST-1D's MLP
they are not (1 vs 2 threads): the reference models retrained for the sixth session's regeneration moved
MNIST-1D's rows for that reason (results/CHANGES.md).

    python benchmarks/thread_determinism.py --task mnist1d
"""
from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default="1,2,1", help="thread counts, in order")
    args = parser.parse_args()

    from tdabench.engine.spec import make_task

    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        task = make_task(args.task, {}, torch.device("cpu"))
        model = task.make_model(args.seed)
        task.train(model, torch.arange(task.config.n_train), args.seed)
        params = [p.detach().clone() for p in model.parameters()]
        runs.append((threads, params))
        print(f"{args.task} seed {args.seed}, {threads} thread(s): sum |θ| = "
              f"{float(sum(p.double().abs().sum() for p in params)):.6f}", flush=True)
    first = runs[0]
    for threads, params in runs[1:]:
        same = all(torch.equal(a, b) for a, b in zip(first[1], params))
        print(f"{first[0]} vs {threads} thread(s): {'bitwise equal' if same else 'different models'}")


if __name__ == "__main__":
    main()
