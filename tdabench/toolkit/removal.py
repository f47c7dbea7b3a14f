"""Top-k removal counterfactuals (``gt.kind=removal``): for each query, remove the k training examples a
method says help it most, retrain, and measure how much the query's loss rises.

The protocol of kronfluence's ``run_counterfactual``, the SOURCE paper and Daunce.  Its retrains depend on
the method's own scores, so this ground truth is built after scoring — per method, per seed — from the
*stored* score matrix (what ``tdabench evaluate`` reads back), and keyed by those scores' digest:

- ``removal_masks``: row 0 keeps every example; then, for each of ``gt.removal_queries`` seeded queries
  (the same for every method) and each fraction f of ``gt.removal_fractions``, the row without the
  k = max(1, round(f·n)) examples of most negative score in that query's column (ties: lower index).
- Every row of replica r is retrained with one seed (common random numbers, as leave-one-out): a rise is
  then what was removed, not a seed; and the seeds are the same for every method, so a difference between
  two methods comes from what they removed.  Random removal is the ``random`` method's row.
- The retrains are cached one file each (a killed build resumes) under the ground-truth cache.

``rises`` turns the measurements into ``[queries, fractions]`` loss rises φ_q(without) − φ_q(all), the
mean over retraining seeds; ``predicted_rises`` is what the scores themselves predict: removing S changes
φ_q by −Σ_{i∈S} scores[i, q] (the score sign: the change when i is included).
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from tdabench.api.seeds import derive_seed


def removal_queries(n_query: int, count: int, seed: int) -> Tensor:
    """The queries a removal ground truth follows: every one (``count`` 0 or ≥ n_query) or a seeded sample,
    sorted; the same for every method of a seed."""
    if count == 0 or count >= n_query:
        return torch.arange(n_query)
    gen = torch.Generator().manual_seed(derive_seed(seed, 0x4E))
    return torch.randperm(n_query, generator=gen)[:count].sort().values


def removal_sizes(n_train: int, fractions: tuple[float, ...]) -> list[int]:
    """k for each fraction: max(1, round(f·n))."""
    return [max(1, int(round(f * n_train))) for f in fractions]


def top_helpful(column: Tensor, k: int) -> Tensor:
    """The ``k`` examples of most negative score in ``column`` ``[n_train]`` (ties: lower index first)."""
    return torch.argsort(column.double(), stable=True)[:k]


def removal_masks(scores: Tensor, queries: Tensor, fractions: tuple[float, ...]) -> Tensor:
    """``[1 + Q·F, n_train]``: row 0 all kept; row 1 + q·F + f without query ``queries[q]``'s top-k(f)."""
    n_train = scores.shape[0]
    sizes = removal_sizes(n_train, fractions)
    masks = torch.ones(1 + len(queries) * len(sizes), n_train, dtype=torch.bool)
    for a, q in enumerate(queries.tolist()):
        order = top_helpful(scores[:, q], max(sizes))
        for b, k in enumerate(sizes):
            masks[1 + a * len(sizes) + b, order[:k]] = False
    return masks


def scores_digest(scores: Tensor) -> str:
    """A short hash of a score matrix's bytes (the removal ground truth's key)."""
    return hashlib.sha256(scores.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def rises(replicas: Tensor, queries: Tensor, n_fractions: int) -> Tensor:
    """``[Q, F]`` measured rises of each followed query's measurement, mean over retraining seeds, from the
    retrains ``replicas`` ``[R, 1 + Q·F, n_query]``."""
    base = replicas[:, 0, queries]                                                     # shape: [R, Q]
    removed = replicas[:, 1:, :].reshape(replicas.shape[0], len(queries), n_fractions, -1)
    own = removed[:, torch.arange(len(queries)), :, queries]                            # shape: [Q, R, F]
    return (own - base.T[:, :, None]).mean(1)


def predicted_rises(scores: Tensor, queries: Tensor, fractions: tuple[float, ...]) -> Tensor:
    """``[Q, F]``: −Σ of the removed examples' scores, the rise the scores predict."""
    sizes = removal_sizes(scores.shape[0], fractions)
    out = torch.empty(len(queries), len(sizes), dtype=torch.float64)
    for a, q in enumerate(queries.tolist()):
        column = scores[:, q].double()
        order = top_helpful(column, max(sizes))
        for b, k in enumerate(sizes):
            out[a, b] = -column[order[:k]].sum()
    return out
