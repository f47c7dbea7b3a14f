"""brittleness: the share of queries whose predicted class flips when the k training examples a method says
help them most are removed and the model retrained (``tdabench.toolkit.brittleness``; Ilyas et al. 2022,
dattri's brittleness test), over the fractions k/n of ``gt.removal_fractions``.

Only followed queries that the model trained on every example classifies correctly count (the others
have no prediction to flip).  The value is the share flipped at k = 5 % of n (the fraction nearest it);
the details hold the whole curve, the queries counted, and per query the smallest fraction that flips it
(the protocol's "smallest k"; null when none does).  Higher is better: a method whose top examples
really carry the prediction flips it with fewer removed."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from tdabench.api.metric import Metric, MetricValue
from tdabench.api.registry import register_metric
from tdabench.api.truth import GroundTruth
from tdabench.toolkit.brittleness import flips

HEADLINE = 0.05


@register_metric
class Brittleness(Metric):
    name = "brittleness"
    version = "1"
    description = "share of correctly classified queries whose prediction flips without their top-k helpful examples (k = 5 % of n)"
    kinds = ("brittleness",)

    def compute(self, scores: Tensor, truth: GroundTruth) -> MetricValue:
        assert truth.queries is not None, "a brittleness ground truth lists the queries it follows"
        correct, flipped = flips(truth.replicas.double(), truth.queries, len(truth.fractions))      # [Q], [Q, F]
        correct, flipped = correct.numpy(), flipped.numpy()
        at = int(np.argmin([abs(f - HEADLINE) for f in truth.fractions]))
        counted = flipped[correct]                                                                 # shape: [Q', F]
        curve = {f"{f:g}": (float(counted[:, b].mean()) if len(counted) else None) for b, f in enumerate(truth.fractions)}
        smallest = [next((truth.fractions[b] for b in range(len(truth.fractions)) if row[b]), None) if ok else None
                    for ok, row in zip(correct, flipped)]
        per_query = np.full(scores.shape[1], np.nan)                   # shape: [n_query], NaN: not followed or not correct
        per_query[truth.queries.numpy()[correct]] = counted[:, at]
        return MetricValue.from_per_query(per_query, None, at_fraction=truth.fractions[at], curve=curve,
                                          queries=truth.queries.tolist(), counted=int(correct.sum()),
                                          smallest_fraction=smallest)
