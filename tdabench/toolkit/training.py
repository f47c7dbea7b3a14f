"""A minibatch training loop shared by the small tasks (the large tasks keep their own recipes)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from tdabench.api.task import Batch, CheckpointHook, take


def steps_per_run(n_examples: int, epochs: int, batch_size: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``n_examples`` in batches of ``batch_size``."""
    return epochs * math.ceil(n_examples / batch_size)


def epoch_batches(indices: Tensor, seed: int, epochs: int, batch_size: int) -> list[Tensor]:
    """The data order of a seeded run: per epoch one ``randperm`` of ``indices`` (CPU generator seeded by
    ``seed``, so the order is the same on every device) cut into consecutive batches; ``[B]`` CPU each."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = indices.cpu()[torch.randperm(indices.numel(), generator=gen)]
        out += list(order.split(batch_size))
    return out


def minibatch_train(model: nn.Module, data: Batch, indices: Tensor, objective: Callable[[nn.Module, Batch], Tensor],
                    optimizer: torch.optim.Optimizer, epochs: int, batch_size: int, seed: int,
                    on_checkpoint: Optional[CheckpointHook] = None, checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
    """``epochs`` shuffled passes over ``data[indices]``; ``objective(model, batch)`` is a scalar.

    The data order is ``epoch_batches(indices, seed, epochs, batch_size)``.
    """
    wanted = set(checkpoint_steps)
    model.train()
    if on_checkpoint is not None and 0 in wanted:
        on_checkpoint(0, model, optimizer.param_groups[0]["lr"])
    for step, batch in enumerate(epoch_batches(indices, seed, epochs, batch_size), start=1):
        optimizer.zero_grad(set_to_none=True)
        objective(model, take(data, batch)).backward()
        optimizer.step()
        if on_checkpoint is not None and step in wanted:
            on_checkpoint(step, model, optimizer.param_groups[0]["lr"])
    return model
