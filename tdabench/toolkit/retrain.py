"""What a ground truth computes: which examples each retrain keeps, and one retrain's measurements.

Kept apart from the caching in ``groundtruth.py`` so that the ground truth's code fingerprint covers
exactly this computation (and the task's code), not its bookkeeping.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tdabench.toolkit.batched import stacked_measure
from tdabench.api.seeds import (
    derive_seed, reference_seed,
)  # noqa: F401  (reference_seed: of reference-order retrains)
from tdabench.api.task import Task


def subset_masks(n_train: int, alpha: float, num_subsets: int, seed: int) -> Tensor:
    """α-subset masks, shape ``[K, n_train]`` bool: each example included i.i.d. with probability α
    (001, Appendix C.1).  Reproducible in ``seed``; an empty subset is redrawn."""
    gen = torch.Generator().manual_seed(derive_seed(seed, 0xA1FA))
    masks = torch.rand(num_subsets, n_train, generator=gen) < alpha
    while (empty := ~masks.any(1)).any():
        masks[empty] = torch.rand(int(empty.sum()), n_train, generator=gen) < alpha
    return masks


def loo_removed(n_train: int, count: int, seed: int) -> Tensor:
    """The examples a leave-one-out ground truth removes, shape ``[m]`` sorted: all of them
    (``count`` 0) or a seeded sample of ``count``."""
    if count == 0 or count >= n_train:
        return torch.arange(n_train)
    gen = torch.Generator().manual_seed(derive_seed(seed, 0x100))
    return torch.randperm(n_train, generator=gen)[:count].sort().values


def loo_masks(n_train: int, removed: Tensor) -> Tensor:
    """Row 0 keeps every example (the baseline model); row 1 + k drops ``removed[k]``.  Shape ``[1 + m, n_train]``."""
    masks = torch.ones(1 + removed.numel(), n_train, dtype=torch.bool)
    masks[1 + torch.arange(removed.numel()), removed] = False
    return masks


def retrain_seed(seed: int, k: int, r: int, common: bool) -> int:
    """The training seed of retrain (subset k, replica r).  ``common``: every row of replica r shares
    one seed (common random numbers: a leave-one-out effect is then the removal's, not the seed's)."""
    return derive_seed(seed, r, 0xC0) if common else derive_seed(seed, k, r)


def train_and_measure(task: Task, mask: Tensor, seed: int) -> Tensor:
    """Train a fresh model on the examples in ``mask`` (shape ``[n_train]``) and return the query
    measurements, shape ``[n_query]`` float32 on the CPU.  Plain function: no Ray, no caching."""
    indices = mask.nonzero().squeeze(1)
    model = task.make_model(seed)
    task.train(model, indices, seed)
    return task.measure(model, task.query_data()).cpu()


def train_weighted_many(task: Task, masks: Tensor, seed: int) -> Tensor:
    """Retrains in the reference order: the full run of ``seed`` (its initialisation and data order) with
    example weights β = ``masks`` ``[M, n_train]`` — an excluded example keeps its place in every
    minibatch with weight 0 — all M at once through ``Task.unroll``.  ``[M, n_query]`` float32, CPU."""
    unroll = task.unroll(task.make_model(seed), torch.arange(task.n_train, device=task.device), seed)
    params = unroll.run_many(masks.to(task.device))
    return stacked_measure(task, unroll.model(unroll.initial()), params, task.query_data()).cpu()


def train_and_measure_many(task: Task, masks: Tensor, seeds: list[int], order: str = "independent") -> Tensor:
    """``train_and_measure`` of each row of ``masks`` ``[M, n_train]``, as ``[M, n_query]`` float32 on the
    CPU: all at once through ``task.train_many`` when the task can, one by one otherwise.  ``order``
    ``reference``: every row is the run of the one seed in ``seeds``, reweighted (``train_weighted_many``)."""
    if order == "reference":
        if len(set(seeds)) != 1:
            raise ValueError(f"reference-order retrains share one seed, got {sorted(set(seeds))}")
        return train_weighted_many(task, masks, seeds[0])
    if task.trains_many:
        out = task.train_many(masks, seeds)
        if tuple(out.shape) != (masks.shape[0], task.n_query):
            raise ValueError(f"{type(task).__name__}.train_many returned shape {tuple(out.shape)}, expected "
                             f"{(masks.shape[0], task.n_query)} [M, n_query]")
        return out.float().cpu()
    return torch.stack([train_and_measure(task, mask, seed) for mask, seed in zip(masks, seeds)])
