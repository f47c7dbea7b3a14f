"""The ground-truth types every layer shares: which ground truth (``GroundTruthConfig``, the ``gt.*``
settings, checked when built) and what it holds (``GroundTruth``: masks and measurements).  Building,
caching and the checks that need a task live in the engine (``tdabench.engine.groundtruth``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from torch import Tensor

from tdabench.api.config import ConfigError


@dataclass(frozen=True)
class GroundTruthConfig:
    """Which ground truth: its kind and settings (``--set gt.KEY=VALUE``)."""

    kind: Literal["subsets", "loo", "mislabel", "removal", "brittleness"] = "subsets"   # subsets: α-subsets (LDS); loo: one retrain per removed example; mislabel: flipped labels found by self-influence (no retrains); removal: each query's top-k helpful examples (by the method's scores) removed and retrained, its loss measured; brittleness: the same retrains, whether its predicted class flips
    alpha: float = 0.5          # subsets: each example kept with probability α (0.5 papers; 0.99 = leave 1 % out)
    num_subsets: int = 100      # subsets: K retrained subsets
    retrain_seeds: int = 1      # R retraining seeds per subset (R ≥ 2 gives the noise ceiling)
    loo_examples: int = 0       # loo: examples removed, a seeded sample (0: every example)
    order: Literal["independent", "reference"] = "independent"   # reference: every retrain is the reference run (its seed and data order) with the excluded examples weighted 0
    checkpoints: int = 0        # also measure every retrain at this many evenly spaced points of its run (0: the end only)
    removal_fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)   # removal, brittleness: k as fractions of the attribution set
    removal_queries: int = 20   # removal, brittleness: queries followed, a seeded sample (0: every query); each costs one retrain per fraction
    mislabel_fraction: float = 0.1   # mislabel: share of the training labels flipped (seeded by the run's seed)
    chunk_size: int = 0         # retrains trained together by tasks that train many at once (0: automatic); not in the key: it moves a measurement by float rounding only (≤ 1e-6)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"gt.alpha={self.alpha}: must lie strictly between 0 and 1 (0.5 is the papers' setting)")
        if self.num_subsets < 3:
            raise ConfigError(f"gt.num_subsets={self.num_subsets}: a rank correlation needs at least 3 subsets; "
                              f"set gt.num_subsets=100")
        if self.retrain_seeds < 1:
            raise ConfigError(f"gt.retrain_seeds={self.retrain_seeds}: must be at least 1")
        if self.chunk_size < 0:
            raise ConfigError(f"gt.chunk_size={self.chunk_size}: must be 0 (automatic) or a positive count")
        if self.order not in ("independent", "reference"):
            raise ConfigError(f"gt.order={self.order!r}: use independent (each retrain its own seed) or reference "
                              f"(the reference run reweighted, as MAGIC's own evaluation)")
        if self.order == "reference" and self.retrain_seeds != 1:
            raise ConfigError(f"gt.retrain_seeds={self.retrain_seeds} with gt.order=reference: every retrain is the "
                              f"one reference run reweighted, so replicas would be identical; set gt.retrain_seeds=1")
        if self.checkpoints < 0:
            raise ConfigError(f"gt.checkpoints={self.checkpoints}: must be 0 (measure at the end only) or a count of "
                              f"points along training; set gt.checkpoints=10")
        object.__setattr__(self, "removal_fractions", tuple(float(f) for f in self.removal_fractions))
        if not self.removal_fractions or not all(0.0 < f < 1.0 for f in self.removal_fractions):
            raise ConfigError(f"gt.removal_fractions={','.join(map(str, self.removal_fractions))}: each must lie strictly "
                              f"between 0 and 1 (shares of the attribution set removed); the protocol's are 0.01,0.02,0.05,0.1")
        if self.removal_queries < 0:
            raise ConfigError(f"gt.removal_queries={self.removal_queries}: use 0 (every query) or a count; 20 is the default")
        if self.after_scoring and self.order != "independent":
            raise ConfigError(f"gt.kind={self.kind} retrains with common seeds of its own: drop gt.order")
        if not 0.0 < self.mislabel_fraction < 0.5:
            raise ConfigError(f"gt.mislabel_fraction={self.mislabel_fraction}: must lie strictly between 0 and 0.5 "
                              f"(the flipped labels must stay a minority); the protocol's default is 0.1")
        if self.kind == "mislabel" and (self.order != "independent" or self.checkpoints):
            raise ConfigError("gt.kind=mislabel retrains nothing: drop gt.order and gt.checkpoints")
        if self.loo_examples < 0 or self.loo_examples in (1, 2):
            raise ConfigError(f"gt.loo_examples={self.loo_examples}: use 0 (every example) or at least 3 "
                              f"(a correlation over removed examples needs 3)")

    @property
    def after_scoring(self) -> bool:
        """Its retrains remove what a method's scores name (top-k removal, brittleness): built after scoring."""
        return self.kind in ("removal", "brittleness")

    @property
    def label(self) -> str:
        """The regime's name on every number measured against it, e.g. ``α=0.5 K=100 R=1``."""
        order = " ref-order" if self.order == "reference" else ""
        order += f" C={self.checkpoints}" if self.checkpoints else ""
        if self.kind == "loo":
            return f"LOO {self.loo_examples or 'all'} R={self.retrain_seeds}{order}"
        if self.kind == "mislabel":
            return f"mislabel {self.mislabel_fraction:.0%}"
        if self.after_scoring:
            return (f"{self.kind} k={'/'.join(f'{f:.0%}' for f in self.removal_fractions)} Q={self.removal_queries or 'all'} "
                    f"R={self.retrain_seeds}{order}")
        return f"α={self.alpha:g} K={self.num_subsets} R={self.retrain_seeds}{order}"

    def settings(self) -> dict:
        """Only the settings this kind uses (so an unused knob does not split the cache; the order only
        when it is not the default, so the independent-order caches keep their keys)."""
        order = {"order": "reference"} if self.order == "reference" else {}
        order |= {"checkpoints": self.checkpoints} if self.checkpoints else {}
        if self.kind == "loo":
            return {"kind": "loo", "loo_examples": self.loo_examples, "retrain_seeds": self.retrain_seeds, **order}
        if self.kind == "mislabel":
            return {"kind": "mislabel", "mislabel_fraction": self.mislabel_fraction}
        if self.after_scoring:
            return {"kind": self.kind, "removal_fractions": list(self.removal_fractions),
                    "removal_queries": self.removal_queries, "retrain_seeds": self.retrain_seeds, **order}
        return {"kind": "subsets", "alpha": self.alpha, "num_subsets": self.num_subsets,
                "retrain_seeds": self.retrain_seeds, **order}


def config_of(entry: dict) -> GroundTruthConfig:
    """The ground-truth settings a record's ``ground_truth`` entry names (other keys ignored)."""
    names = {f.name for f in dataclasses.fields(GroundTruthConfig)}
    return GroundTruthConfig(**{k: v for k, v in entry.items() if k in names})


@dataclass
class GroundTruth:
    """Masks ``[K, n_train]``, measurements ``[R, K, n_query]``; ``removed`` ``[K-1]`` for leave-one-out
    (row 0 is then the model trained on every example)."""

    masks: Tensor
    replicas: Tensor
    key: str
    kind: str = "subsets"
    label: str = ""
    removed: Optional[Tensor] = None
    queries: Optional[Tensor] = None      # removal: the followed queries ``[Q]`` (rows 1 + q·F + f of masks)
    fractions: tuple[float, ...] = ()     # removal: the fractions removed
    trajectory: Optional[Tensor] = None   # gt.checkpoints > 0: ``[R, K, C, Q]``, measured along each run (last: the end)
    at: int = 0                           # replicas are the trajectory's checkpoint ``at`` (1-based; 0: the end)

    @property
    def targets(self) -> Tensor:
        """The mean over retraining seeds, shape ``[K, n_query]``."""
        return self.replicas.mean(0)
