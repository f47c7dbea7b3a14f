"""datainf: DataInf (Kwon et al. 2024) through dattri's ``IFAttributorDataInf`` — per layer l, the
damped empirical Fisher (Gₗ + λI) is inverted as the mean of rank-one Sherman–Morrison inverses,
(Gₗ + λI)⁻¹v ≈ (1/n)Σᵢ (v − (gᵢᵀv)/(λ + ‖gᵢ‖²)·gᵢ)/λ, which swaps the order of averaging and inversion
(exact for one example, an approximation otherwise; cheap, closed-form, built for LoRA-sized layers).
Layers are the model's parameter tensors grouped by module.  score[i, j] = −(1/n)·Σₗ ∇ₗℓᵢᵀ(…)⁻¹∇ₗφⱼ.
``damping`` must be positive (it divides); DataInf's paper scales it per layer, here it is one λ."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.toolkit.dattri_bridge import DattriMethod, attribution_task, curvature_damping, layer_names, loader
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import take


@dataclass(frozen=True)
class DataInfConfig(MethodConfig):
    damping: float = 0.1             # λ of each layer's (G + λI); > 0 (plus the task's L2 curvature)
    fit_fraction: float = 1.0        # share of the attribution set (its first rows) estimating the Fisher
    query_batch: int = 0             # queries whose gradients are held and transformed together (0: ≤ 8 GiB of them)
    train_batch: int = 0             # attribution rows whose per-example gradients are held at once (0: ≤ 8 GiB of them)
    patterns: tuple[str, ...] = ()   # regexes of parameter names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "datainf")
        number(self, "datainf", "damping", "λ of each layer's damped Fisher (it divides)", above=0)
        number(self, "datainf", "fit_fraction", "share of the attribution set estimating the Fisher",
               above=0, at_most=1)
        integer(self, "datainf", "query_batch", "queries per pass; 0: up to 8 GiB of gradients", minimum=0)
        integer(self, "datainf", "train_batch", "attribution rows per gradient pass; 0: up to 8 GiB of gradients", minimum=0)


@register_method
class DataInf(DattriMethod):
    name = "datainf"
    description = "DataInf: per-layer Fisher inverted by averaged Sherman-Morrison (dattri)"
    Config = DataInfConfig
    tunable = {"damping": ("0.001", "0.01", "0.1", "1", "10")}   # --set datainf.damping=auto (each layer's λ)

    def fit_data(self, ctx: Context) -> Any:
        """The Fisher sample: the first ``fit_fraction`` of the attribution rows."""
        rows = max(1, math.ceil(ctx.n_train * self.config.fit_fraction))
        self._info["fisher_rows"] = rows
        return loader(take(ctx.train_data, torch.arange(rows)), rows)

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import IFAttributorDataInf

        cfg = self.config
        damping, self._info = curvature_damping(ctx, cfg.damping, cfg.patterns)
        return IFAttributorDataInf(task=attribution_task(ctx), layer_name=layer_names(ctx.model, cfg.patterns),
                                   device=str(ctx.device), regularization=damping)
