"""removal: how much a query's loss rises when the k training examples a method says help it most are
removed and the model retrained (``tdabench.toolkit.removal``), over the fractions k/n of ``gt.removal_fractions``.

The value is the mean rise over the followed queries at k = 5 % of n (the fraction nearest it when 5 % is
not asked for); the details hold the whole curve and, per fraction, the Pearson correlation over queries
between the rise the scores predict (−Σ of the removed scores) and the retrained one."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from tdabench.api.truth import GroundTruth
from tdabench.toolkit.lds import pearson_columns
from tdabench.api.metric import Metric, MetricValue
from tdabench.api.registry import register_metric
from tdabench.toolkit.removal import predicted_rises, rises

HEADLINE = 0.05


@register_metric
class Removal(Metric):
    name = "removal"
    version = "1"
    description = "mean rise of a query's loss after retraining without its top-k helpful examples (k = 5 % of n)"
    kinds = ("removal",)

    def compute(self, scores: Tensor, truth: GroundTruth) -> MetricValue:
        assert truth.queries is not None, "a removal ground truth lists the queries it follows"
        actual = rises(truth.replicas.double(), truth.queries, len(truth.fractions)).numpy()       # shape: [Q, F]
        predicted = predicted_rises(scores.detach().cpu(), truth.queries, truth.fractions).numpy()  # shape: [Q, F]
        pearson = pearson_columns(predicted, actual) if len(truth.queries) >= 3 else np.full(len(truth.fractions), np.nan)
        at = int(np.argmin([abs(f - HEADLINE) for f in truth.fractions]))
        curve = {f"{f:g}": float(actual[:, b].mean()) for b, f in enumerate(truth.fractions)}
        fit = {f"{f:g}": (None if np.isnan(p) else float(p)) for f, p in zip(truth.fractions, pearson)}
        per_query = np.full(scores.shape[1], np.nan)                            # shape: [n_query], NaN: not followed
        per_query[truth.queries.numpy()] = actual[:, at]
        return MetricValue.from_per_query(per_query, None, at_fraction=truth.fractions[at], curve=curve,
                                          predicted_pearson=fit, queries=truth.queries.tolist())
