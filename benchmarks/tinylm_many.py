"""Would tinylm pay off trained many models at a time (issue 20)?  One training step's forward and
backward for M models: M one-model steps (the reference) against one step of M stacked copies under
``torch.func.vmap`` (what ``batched.train_many_adam`` runs), on one thread, same minibatch.

    python benchmarks/tinylm_many.py [--models 8] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch
from torch.func import grad, vmap

from tdabench.toolkit.batched import stack_models
from tdabench.toolkit.meter import Meter
from tdabench.tasks.tinylm import TinyLM
from tdabench.api.unroll import stateless


def seconds(f: Callable[[], object], n: int) -> float:
    """Mean wall-clock of ``f`` over ``n`` calls, after one warm-up call."""
    f()
    with Meter() as meter:
        for _ in range(n):
            f()
    return meter.usage.seconds / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8, help="models stepped at once")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = TinyLM()
    batch = tuple(x[: task.config.batch_size] for x in task.train_data())      # shape: [B, T] each
    model = task.make_model(0).train()

    def one() -> None:
        model.zero_grad(set_to_none=True)
        task.loss(model, batch).mean().backward()

    models = [task.make_model(0).train() for _ in range(args.models)]
    params = {n: p.detach() for n, p in stack_models(models).items()}
    stacked = tuple(x.expand(args.models, *x.shape) for x in batch)             # shape: [M, B, T]
    step = vmap(grad(lambda p, *rows: task.loss(stateless(models[0], p), rows).mean()))
    refs, manys = [], []
    for _ in range(args.rounds):
        refs.append(seconds(one, 10) * args.models)
        manys.append(seconds(lambda: step(params, *stacked), 3))
    ref, many = statistics.median(refs), statistics.median(manys)
    print(f"tinylm ({sum(p.numel() for p in model.parameters()):,} parameters), batch {tuple(batch[0].shape)}, "
          f"{args.models} models, 1 thread")
    print(f"one model at a time (reference):  {ref * 1e3:8.1f} ms per step of all {args.models}")
    print(f"stacked under vmap:               {many * 1e3:8.1f} ms   {ref / many:5.2f}x the reference")


if __name__ == "__main__":
    main()
