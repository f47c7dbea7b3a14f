"""loo: per query, Pearson (and Spearman) over the removed examples between scores[i, j] and the
actual leave-one-out effect φ_j(all) − φ_j(all but i), both in the score sign convention."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from tdabench.api.truth import GroundTruth
from tdabench.toolkit.lds import corrected_ceiling, pearson_columns, spearman_columns, split_halves
from tdabench.api.metric import Metric, MetricValue
from tdabench.api.registry import register_metric


def loo_effects(targets: np.ndarray) -> np.ndarray:
    """``[1 + m, Q]`` measurements (row 0: every example) → effects of including each removed one ``[m, Q]``."""
    return targets[0][None, :] - targets[1:]


@register_metric
class LeaveOneOut(Metric):
    name = "loo"
    version = "1"
    description = "per query, Pearson over removed examples of scores against actual leave-one-out effects"
    kinds = ("loo",)

    def compute(self, scores: Tensor, truth: GroundTruth) -> MetricValue:
        assert truth.removed is not None, "a leave-one-out ground truth lists its removed examples"
        pred = scores.detach().double().cpu()[truth.removed].numpy()           # shape: [m, Q]
        actual = loo_effects(truth.targets.double().numpy())                    # shape: [m, Q]
        pearson = pearson_columns(pred, actual)
        ceiling = None
        if truth.replicas.shape[0] >= 2:
            a, b, k = split_halves(truth.replicas)
            ceiling = corrected_ceiling(float(np.nanmean(pearson_columns(loo_effects(a), loo_effects(b)))), k)
        spearman = float(np.nanmean(spearman_columns(pred, actual)))
        return MetricValue.from_per_query(pearson, ceiling, spearman=spearman)
