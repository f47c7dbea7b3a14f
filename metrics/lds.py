"""lds: the linear datamodelling score at the ground truth's α (Spearman over subsets, per query)."""
from __future__ import annotations

from torch import Tensor

from tdabench.api.truth import GroundTruth
from tdabench.toolkit.lds import lds_per_query, noise_ceiling
from tdabench.api.metric import Metric, MetricValue
from tdabench.api.registry import register_metric


@register_metric
class LDS(Metric):
    name = "lds"
    version = "1"
    description = "per query, Spearman over the K α-subsets of Σ_{i∈S} scores[i, j] against the retrained φ_j"
    kinds = ("subsets",)

    def compute(self, scores: Tensor, truth: GroundTruth) -> MetricValue:
        per_query = lds_per_query(scores.detach().float().cpu(), truth.masks, truth.targets)
        ceiling = noise_ceiling(truth.replicas) if truth.replicas.shape[0] >= 2 else None
        return MetricValue.from_per_query(per_query, ceiling)
