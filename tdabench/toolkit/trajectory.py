"""Retrains measured along their training, not only at its end (``gt.checkpoints``; the stagewise study).

Each retrain's query measurements are recorded at ``count`` evenly spaced fractions of its own run
(``checkpoints.checkpoint_steps``; the last is the end), so row c of every retrain is the same stage
of training whatever its subset's size.  Kept apart from ``retrain.py`` so that only the ground truths
measured over time carry this file in their code fingerprint.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import vmap

from tdabench.toolkit.batched import stacked_measure
from tdabench.toolkit.checkpoints import checkpoint_steps
from tdabench.api.task import Task


def measure_along(task: Task, mask: Tensor, seed: int, count: int) -> Tensor:
    """Train a fresh model on ``mask`` ``[n_train]`` with ``seed``; the query measurements at ``count``
    checkpoints of the run, ``[count, n_query]`` float32 on the CPU."""
    indices = mask.nonzero().squeeze(1).to(task.device)
    steps = checkpoint_steps(task.total_steps(indices.numel()), count, "even")
    rows: list[Tensor] = []

    def record(step: int, model: nn.Module, lr: float) -> None:
        rows.append(task.measure(model, task.query_data()).cpu())

    task.train(task.make_model(seed), indices, seed, on_checkpoint=record, checkpoint_steps=steps)
    if len(rows) != len(steps):
        raise RuntimeError(f"{task.name}.train reported {len(rows)} checkpoints, {len(steps)} were asked for")
    return torch.stack(rows)


@torch.no_grad()
def measure_weighted_along(task: Task, masks: Tensor, seed: int, count: int) -> Tensor:
    """The reference-order retrains (the run of ``seed`` with weights β = ``masks`` ``[M, n_train]``, see
    ``retrain.train_weighted_many``) measured at ``count`` checkpoints: ``[M, count, n_query]``."""
    unroll = task.unroll(task.make_model(seed), torch.arange(task.n_train, device=task.device), seed)
    template, beta = unroll.model(unroll.initial()), masks.to(task.device)
    wanted = checkpoint_steps(unroll.steps, count, "even")
    one = unroll.initial()
    state = {k: {n: v.expand(beta.shape[0], *v.shape).clone() for n, v in part.items()} for k, part in one.items()}
    rows = []
    for t in range(unroll.steps):
        state = vmap(lambda s, w: unroll.step(s, t, w))(state, unroll.weights(beta, t))   # noqa: B023 (called at once)
        if t + 1 in wanted:
            rows.append(stacked_measure(task, template, state["params"], task.query_data()).cpu())
    return torch.stack(rows, dim=1)


def measure_many_along(task: Task, masks: Tensor, seeds: list[int], count: int, order: str = "independent") -> Tensor:
    """``[M, count, n_query]``: every row of ``masks`` measured along its run (one by one, or all at once
    in the reference order)."""
    if order == "reference":
        return measure_weighted_along(task, masks, seeds[0], count)
    return torch.stack([measure_along(task, mask, seed, count) for mask, seed in zip(masks, seeds)])
