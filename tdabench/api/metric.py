"""The Metric interface: how a score matrix is judged against a ground truth.

A metric is a plug-in like a method: one file under ``metrics/`` registered with
``@register_metric`` (or an entry point in the ``tdabench.metrics`` group).  ``version`` is part of
every record's metric entry: bump it whenever the computation changes, and stored numbers are then
recomputed from the stored scores (no method runs again).
"""
from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
from torch import Tensor

from tdabench.api.truth import GroundTruth


@dataclass
class MetricValue:
    """One metric on one seed: the summary, its per-query values and the ground truth's ceiling."""

    value: float                                   # mean over queries (undefined queries left out)
    per_query: list[Optional[float]]               # shape: [n_query]
    ceiling: Optional[float] = None                # noise ceiling of this ground truth (R ≥ 2), else None
    details: dict[str, Any] = field(default_factory=dict)   # other summaries (e.g. Spearman next to Pearson)

    @classmethod
    def from_per_query(cls, per_query: np.ndarray, ceiling: Optional[float] = None, **details: Any) -> "MetricValue":
        """Summarise ``[n_query]`` values (NaN = undefined query) as their mean."""
        value = float(np.nanmean(per_query)) if np.isfinite(per_query).any() else math.nan
        return cls(value=value, per_query=[None if math.isnan(v) else float(v) for v in per_query],
                   ceiling=ceiling, details=details)


class Metric(ABC):
    """A way to score attribution scores ``[n_train, n_query]`` against a ground truth."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    #: The ground-truth kinds (``GroundTruthConfig.kind``) the metric is defined on.
    kinds: ClassVar[tuple[str, ...]] = ("subsets",)

    def compute(self, scores: Tensor, truth: GroundTruth) -> MetricValue:
        """The metric of ``scores`` (shape ``[n_train, n_query]``) against ``truth``."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")
