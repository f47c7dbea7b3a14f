"""The linear datamodelling score (LDS), its seed statistics and the noise ceiling."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor


def spearman_columns(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``pred`` with the same column of ``target``.

    Shapes: ``[K, Q]`` each → ``[Q]``.  Ties get average ranks (as ``scipy.stats.spearmanr``).
    A constant target column has no defined correlation: NaN.  A constant prediction against a
    varying target carries no information: 0.
    """
    rp = rankdata(pred, axis=0, method="average")
    rt = rankdata(target, axis=0, method="average")
    rp = rp - rp.mean(0)
    rt = rt - rt.mean(0)
    norm_p, norm_t = np.sqrt((rp**2).sum(0)), np.sqrt((rt**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rp * rt).sum(0) / (norm_p * norm_t)
    rho = np.where(norm_p == 0, 0.0, rho)
    return np.where(norm_t == 0, np.nan, rho)


def lds_per_query(scores: Tensor, masks: Tensor, targets: Tensor, chunk: int = 1024) -> np.ndarray:
    """Per-query LDS: Spearman over subsets of ``masks @ scores[:, j]`` against ``targets[:, j]``.

    Shapes: scores ``[n_train, n_query]``, masks ``[K, n_train]`` (bool), targets ``[K, n_query]``
    → ``[n_query]``.  Queries are processed ``chunk`` at a time so memory stays bounded.
    """
    n_train, n_query = scores.shape
    if masks.shape[1] != n_train or targets.shape != (masks.shape[0], n_query):
        raise ValueError(f"shape mismatch: scores {tuple(scores.shape)}, masks {tuple(masks.shape)}, "
                         f"targets {tuple(targets.shape)}; expected [n, Q], [K, n], [K, Q]")
    m = masks.to(torch.float64)
    out = np.empty(n_query)
    for s in range(0, n_query, chunk):
        pred = (m @ scores[:, s : s + chunk].to(torch.float64)).numpy()  # shape: [K, chunk]
        out[s : s + chunk] = spearman_columns(pred, targets[:, s : s + chunk].double().numpy())
    return out


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


def noise_ceiling(replicas: Tensor) -> float:
    """How well one half of the retraining seeds predicts the other half, as an LDS.

    ``replicas`` has shape ``[R, K, Q]`` (R ≥ 2): the mean over the first ⌊R/2⌋ seeds is ranked
    against the mean over the rest, per query, over the K subsets; the ceiling is the mean over
    queries.  Any method's LDS against the mean target is expected to sit below it.
    """
    r = replicas.shape[0]
    if r < 2:
        raise ValueError("the noise ceiling needs at least 2 retraining seeds per subset")
    half = r // 2
    a = replicas[:half].double().mean(0).numpy()
    b = replicas[half:].double().mean(0).numpy()
    return float(np.nanmean(spearman_columns(a, b)))
