"""LDS against scipy and hand-computed cases; seed statistics; the noise ceiling."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tdabench.toolkit.lds import lds, lds_per_query, mean_se, noise_ceiling, spearman_columns, split_half


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, size=(40, 7)).astype(float)   # many ties
    target = rng.normal(size=(40, 7))
    ours = spearman_columns(pred, target)
    ref = [spearmanr(pred[:, j], target[:, j]).statistic for j in range(7)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_hand_computed_cases():
    pred = np.array([[1.0, 1.0, 2.0], [2.0, 1.0, 2.0], [3.0, 1.0, 1.0]])
    target = np.array([[3.0, 1.0, 5.0], [2.0, 2.0, 5.0], [1.0, 3.0, 5.0]])
    rho = spearman_columns(pred, target)
    assert rho[0] == pytest.approx(-1.0)     # perfectly reversed
    assert rho[1] == 0.0                      # constant prediction: no information
    assert math.isnan(rho[2])                 # constant target: undefined, left out of the mean


def test_lds_is_mean_over_defined_queries_and_blocking_is_invisible():
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(30, 50, generator=gen) < 0.5
    scores = torch.randn(50, 9, generator=gen)
    targets = masks.double() @ scores.double() + 0.5 * torch.randn(30, 9, generator=gen, dtype=torch.float64)
    targets[:, 4] = 1.0                       # one undefined query
    full = lds_per_query(scores, masks, targets, block=1000)
    for block in (1, 7, 50):                  # rows summed in other blocks (and orders): the same ranks
        np.testing.assert_allclose(lds_per_query(scores, masks, targets, block=block), full, atol=1e-12)
    assert math.isnan(full[4])
    assert lds(scores, masks, targets) == pytest.approx(np.nanmean(full))
    assert lds(scores, masks, targets) > 0.8  # a nearly exact linear datamodel


def test_lds_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        lds_per_query(torch.zeros(5, 3), torch.zeros(4, 6, dtype=torch.bool), torch.zeros(4, 3))


def test_mean_se_hand_computed():
    mean, se = mean_se([0.1, 0.2, 0.3, 0.6])
    assert mean == pytest.approx(0.3)
    assert se == pytest.approx(np.std([0.1, 0.2, 0.3, 0.6], ddof=1) / 2)
    assert math.isnan(mean_se([0.4])[1])


def test_noise_ceiling_limits():
    gen = torch.Generator().manual_seed(2)
    signal = torch.randn(1, 50, 20, generator=gen)
    assert noise_ceiling(signal.repeat(4, 1, 1)) == pytest.approx(1.0)       # noiseless retrains
    pure_noise = torch.randn(4, 2000, 20, generator=gen)
    assert abs(split_half(pure_noise)) < 0.02 and noise_ceiling(pure_noise) < 0.15   # nothing to predict
    with pytest.raises(ValueError):
        noise_ceiling(signal)


@pytest.mark.parametrize("seeds, noise", [(2, 1.0), (4, 1.5), (3, 0.7)])
def test_corrected_ceiling_is_the_lds_of_the_noise_free_predictor(seeds, noise):
    """Targets = signal + independent seed noise.  The best any method can do is predict the signal
    exactly; its LDS against the R-seed mean is the ceiling (closed form for Gaussians:
    corr = 1/√(1 + σ²/R)).  The raw split-half correlation underestimates it; the corrected one does not."""
    gen = torch.Generator().manual_seed(seeds)
    k, q = 3000, 30
    masks = torch.rand(k, 40, generator=gen) < 0.5
    scores = torch.randn(40, q, generator=gen, dtype=torch.float64)
    truth_signal = masks.double() @ scores                                       # shape: [K, Q]
    replicas = truth_signal[None] + noise * truth_signal.std(0) * torch.randn(seeds, k, q, generator=gen, dtype=torch.float64)
    ideal = lds(scores, masks, replicas.mean(0))
    closed = 1.0 / math.sqrt(1.0 + noise**2 / seeds)                              # Pearson; Spearman ≈ it here
    assert ideal == pytest.approx(closed, abs=0.02)
    assert noise_ceiling(replicas) == pytest.approx(ideal, abs=0.02)
    assert split_half(replicas) < ideal - 0.03                                    # the uncorrected one is too low


def test_lds_is_scipys_spearman_of_float64_sums_also_for_float32_scores():
    """Predictions are summed in float64 whatever the scores' dtype: a float32 sum (3.4x faster GEMM on
    this machine) swapped the ranks of near-tied predictions in 0.4-1.2 % of queries at such sizes and
    moved those queries' LDS by up to 1.2e-3 (issue #19), so the metric stays the float64 answer."""
    gen = torch.Generator().manual_seed(3)
    k, n, q = 100, 20000, 1000
    masks = torch.rand(k, n, generator=gen) < 0.5
    scores = torch.randn(n, q, generator=gen) + 0.3
    targets = 0.02 * (masks.double() @ scores.double()) + torch.randn(k, q, generator=gen, dtype=torch.float64)
    pred = (masks.double() @ scores.double()).numpy()
    ref = np.array([spearmanr(pred[:, j], targets[:, j].numpy()).statistic for j in range(q)])
    np.testing.assert_allclose(lds_per_query(scores, masks, targets), ref, atol=1e-12)
    np.testing.assert_allclose(lds_per_query(scores.double(), masks, targets), ref, atol=1e-12)
