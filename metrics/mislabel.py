"""mislabel: how well self-influence finds flipped labels — ROC-AUC of ranking the training examples by
−scores[i, i] (most negative self-influence first) against which were flipped, and the share of the
flipped ones among the first 10 % and 20 % inspected (``tdabench.toolkit.labelnoise``)."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from torch import Tensor

from tdabench.api.truth import GroundTruth
from tdabench.toolkit.labelnoise import found_after
from tdabench.api.metric import Metric, MetricValue
from tdabench.api.registry import register_metric


def roc_auc(suspicion: np.ndarray, positive: np.ndarray) -> float:
    """The Mann–Whitney form of ROC-AUC: P(a flipped example is ranked above a clean one), ties counted half."""
    ranks = rankdata(suspicion)                                   # average ranks of ties
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@register_metric
class Mislabel(Metric):
    name = "mislabel"
    version = "1"
    description = "ROC-AUC of −self-influence against the flipped labels; share found after inspecting 10 % / 20 %"
    kinds = ("mislabel",)

    def compute(self, scores: Tensor, truth: GroundTruth) -> MetricValue:
        suspicion = -scores.detach().double().cpu()[:, 0]                       # shape: [n_train]
        flipped = truth.masks[0].bool().cpu()                                   # shape: [n_train]
        auc = roc_auc(suspicion.numpy(), flipped.numpy())
        return MetricValue(value=auc, per_query=[auc], details={
            "found_at_10": found_after(suspicion, flipped, 0.10), "found_at_20": found_after(suspicion, flipped, 0.20)})
