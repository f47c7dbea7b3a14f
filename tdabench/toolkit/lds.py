"""The linear datamodelling score (LDS), its seed statistics and the noise ceiling."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def spearman_columns(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``pred`` with the same column of ``target``.

    Shapes: ``[K, Q]`` each → ``[Q]``.  Ties get average ranks (as ``scipy.stats.spearmanr``).
    A constant target column has no defined correlation: NaN.  A constant prediction against a
    varying target carries no information: 0.
    """
    from scipy.stats import rankdata   # here, not at the top: scipy.stats takes a second to import, and
                                       # every command (a ground-truth build too) imports this module
    return pearson_columns(rankdata(pred, axis=0, method="average"), rankdata(target, axis=0, method="average"))


#: Training rows per block of the prediction product: a block of a row-major score matrix is contiguous,
#: so it converts to float64 at memory speed (a column slice is strided: converting 1,024 columns of a
#: 50,000 × 10,000 matrix took as long as their product); 2,048 rows of 10,000 queries are 164 MB.
ROW_BLOCK = 2048


def lds_per_query(scores: Tensor, masks: Tensor, targets: Tensor, block: int = ROW_BLOCK) -> np.ndarray:
    """Per-query LDS: Spearman over subsets of ``masks @ scores[:, j]`` against ``targets[:, j]``.

    Shapes: scores ``[n_train, n_query]``, masks ``[K, n_train]`` (bool), targets ``[K, n_query]``
    → ``[n_query]``.  The predictions are exact float64 sums, accumulated over ``block`` training
    rows at a time (memory: the score matrix plus one float64 block); float32 sums would swap the
    ranks of near-tied predictions (``tests/test_lds.py``).
    """
    n_train, n_query = scores.shape
    if masks.shape[1] != n_train or targets.shape != (masks.shape[0], n_query):
        raise ValueError(f"shape mismatch: scores {tuple(scores.shape)}, masks {tuple(masks.shape)}, "
                         f"targets {tuple(targets.shape)}; expected [n, Q], [K, n], [K, Q]")
    m = masks.to(torch.float64)
    pred = torch.zeros(masks.shape[0], n_query, dtype=torch.float64)           # shape: [K, Q]
    # one float64 buffer for every block: a fresh 164 MB allocation per block costs its page faults,
    # which took as long as the product itself
    buffer = torch.empty(min(block, n_train), n_query, dtype=torch.float64)
    for s in range(0, n_train, block):
        rows = buffer[: min(block, n_train - s)]
        rows.copy_(scores[s : s + block])
        pred.addmm_(m[:, s : s + block], rows)
    return spearman_columns(pred.numpy(), targets.double().numpy())


def lds(scores: Tensor, masks: Tensor, targets: Tensor) -> float:
    """LDS: the mean over queries (undefined queries, with constant targets, left out)."""
    return float(np.nanmean(lds_per_query(scores, masks, targets)))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / √S) of per-seed values; SE is NaN for one seed."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else math.nan
    return float(arr.mean()), se


def pearson_columns(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``pred`` with the same column of ``target``, shapes
    ``[K, Q]`` → ``[Q]``; NaN where the target is constant, 0 where only the prediction is."""
    p = pred - pred.mean(0)
    t = target - target.mean(0)
    norm_p, norm_t = np.sqrt((p**2).sum(0)), np.sqrt((t**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (p * t).sum(0) / (norm_p * norm_t)
    rho = np.where(norm_p == 0, 0.0, rho)
    return np.where(norm_t == 0, np.nan, rho)


def split_halves(replicas: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """The means of the first ⌊R/2⌋ and of the other retraining seeds (``[K, Q]`` each) and the
    Spearman–Brown length factor k = R / √(h₁h₂) from a half to all R seeds (2 for even R)."""
    r = replicas.shape[0]
    if r < 2:
        raise ValueError("a noise ceiling needs at least 2 retraining seeds per subset (gt.retrain_seeds ≥ 2)")
    half = r // 2
    a = replicas[:half].double().mean(0).numpy()
    b = replicas[half:].double().mean(0).numpy()
    return a, b, r / math.sqrt(half * (r - half))


def corrected_ceiling(split_half: float, k: float) -> float:
    """The highest correlation any prediction can reach with the R-seed mean target.

    The split-half correlation r estimates the reliability of a half; Spearman–Brown gives the
    reliability of the full R-seed mean, ρ = k·r / (1 + (k − 1)·r); a prediction correlates with a
    target of reliability ρ at most √ρ (its correlation with the noise-free target is at most 1).
    r ≤ 0 (no shared signal) gives 0.  Pass the mean of the per-query r: correcting each query
    first and then averaging would bias the ceiling upwards (√ of a clipped noisy r).
    """
    r = min(max(float(split_half), 0.0), 1.0)
    return math.sqrt(k * r / (1.0 + (k - 1.0) * r))


def noise_ceiling(replicas: Tensor) -> float:
    """The LDS noise ceiling of a ground truth ``[R, K, Q]`` (R ≥ 2): the Spearman–Brown corrected
    ceiling of the split-half rank correlation over subsets (mean over queries)."""
    a, b, k = split_halves(replicas)
    return corrected_ceiling(float(np.nanmean(spearman_columns(a, b))), k)


def split_half(replicas: Tensor) -> float:
    """The uncorrected split-half LDS: one half of the seeds predicting the other, mean over queries."""
    a, b, _ = split_halves(replicas)
    return float(np.nanmean(spearman_columns(a, b)))
