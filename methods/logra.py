"""logra: LoGra (Choe et al. 2024) through dattri's ``LoGraAttributor`` — each Linear layer's per-example
gradient (input ⊗ output-gradient, from forward/backward hooks) is projected with a Kronecker-factored
Gaussian map to √k × √k dimensions, and an influence function is taken in that space with the damped
empirical Fisher of the projected gradients (``hessian="eFIM"``) or none (``"Identity"``).
score[i, j] = −(1/n)·ĝᵢᵀ(F̂ + λI)⁻¹ĝⱼ, ĝ the projected gradients of the loss (i) and the measurement (j).
Only ``nn.Linear`` layers are tracked (the default: all of them)."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from tdabench.api.checks import choices_and_patterns, fail, integer, number
from tdabench.toolkit.dattri_bridge import DattriMethod, linear_layers, measured_task, rows
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method


@dataclass(frozen=True)
class LoGraConfig(MethodConfig):
    proj_dim: int = 64                              # k per layer, a perfect square (√k per Kronecker factor)
    hessian: Literal["eFIM", "Identity"] = "eFIM"   # damped empirical Fisher of the projected gradients, or none
    damping: Optional[float] = None                 # λ; None: dattri's default (0.1 × the mean eigenvalue)
    batch_size: int = 64                            # rows per hooked forward/backward pass
    patterns: tuple[str, ...] = ()                  # regexes of Linear module names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "logra")
        integer(self, "logra", "proj_dim", "projected dimensions per layer (a perfect square)", minimum=1)
        if math.isqrt(self.proj_dim) ** 2 != self.proj_dim:
            fail("logra", "proj_dim", self.proj_dim, "a perfect square", "projected dimensions per layer",
                 math.isqrt(self.proj_dim) ** 2 or 1)
        number(self, "logra", "damping", "λ added to the projected Fisher", above=0, optional=True)
        integer(self, "logra", "batch_size", "rows per hooked pass", minimum=1)


class BlockProjected(DattriMethod):
    """Shared by ``logra`` and ``factgrass``: dict rows through ``Measured``, sums per row."""

    def block_attributor(self, ctx: Context, cls: type, **settings: Any) -> Any:
        """``cls`` (a dattri block-projected attributor) on ``Measured(ctx.model)``'s Linear layers."""
        cfg = self.config
        task, _ = measured_task(ctx)
        self._info = {"layers": linear_layers(ctx.model, cfg.patterns)}
        return cls(task=task, layer_names=self._info["layers"], hessian=cfg.hessian, damping=cfg.damping,
                   device=str(ctx.device), proj_dim=cfg.proj_dim, offload="none", cache_dir=self.scratch(ctx), **settings)

    def scratch(self, ctx: Context) -> str:
        """A fresh private directory for dattri's batch metadata: without one it writes, and later reads
        back, ``batch_metadata.json`` in the working directory, so a second run would reuse the first's."""
        self._scratch = tempfile.TemporaryDirectory(dir=ctx.cache_dir, prefix=f"{self.name}-")
        return self._scratch.name

    def dtype(self, ctx: Context) -> torch.dtype:
        return torch.float32                      # see Measured

    def fit_data(self, ctx: Context) -> Any:
        return rows(ctx.train_data, self.config.batch_size)

    def score_data(self, ctx: Context) -> tuple[Any, Any]:
        return rows(ctx.train_data, self.config.batch_size), rows(ctx.query_data, self.config.batch_size)


@register_method
class LoGra(BlockProjected):
    name = "logra"
    description = "LoGra: Kronecker-projected per-layer gradients, IF with their Fisher (dattri)"
    Config = LoGraConfig
    #: --set logra.damping=auto (λ of the projected Fisher)
    tunable = {"damping": ("0.00001", "0.0001", "0.001", "0.01", "0.1", "1", "10")}

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import LoGraAttributor

        return self.block_attributor(ctx, LoGraAttributor)
