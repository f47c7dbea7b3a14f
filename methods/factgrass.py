"""factgrass: FactGraSS (the follow-up to LoGra) through dattri's ``FactGraSSAttributor`` — each Linear
layer's per-example gradient is first sparsified by a factorised random mask to ``blowup`` × k
dimensions, then sketched to k by a sparse Johnson–Lindenstrauss transform, and an influence function
is taken there with the damped empirical Fisher of the sketches (or none).  Same interface, sign and
scale as ``logra``: score[i, j] = −(1/n)·ĝᵢᵀ(F̂ + λI)⁻¹ĝⱼ.  Only ``nn.Linear`` layers are tracked."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

from tdabench.api.checks import choices_and_patterns, fail, integer, number
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method

from tdabench.methods.logra import BlockProjected


@dataclass(frozen=True)
class FactGraSSConfig(MethodConfig):
    proj_dim: int = 64                              # k per layer after the sketch
    blowup: int = 4                                 # the mask keeps blowup × k (a perfect square) dimensions first
    hessian: Literal["eFIM", "Identity"] = "eFIM"   # damped empirical Fisher of the sketches, or none
    damping: Optional[float] = None                 # λ; None: dattri's default
    batch_size: int = 64                            # rows per hooked forward/backward pass
    patterns: tuple[str, ...] = ()                  # regexes of Linear module names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "factgrass")
        integer(self, "factgrass", "proj_dim", "sketched dimensions per layer", minimum=1)
        integer(self, "factgrass", "blowup", "the mask's dimensions over proj_dim", minimum=1)
        if math.isqrt(self.proj_dim * self.blowup) ** 2 != self.proj_dim * self.blowup:
            fail("factgrass", "blowup", self.blowup, f"such that blowup × proj_dim ({self.proj_dim}) is a perfect square",
                 "the factorised mask has √(blowup·k) rows per factor", 4 if self.proj_dim == 64 else 1)
        number(self, "factgrass", "damping", "λ added to the sketched Fisher", above=0, optional=True)
        integer(self, "factgrass", "batch_size", "rows per hooked pass", minimum=1)


@register_method
class FactGraSS(BlockProjected):
    name = "factgrass"
    description = "FactGraSS: masked then SJLT-sketched per-layer gradients, IF with their Fisher (dattri)"
    Config = FactGraSSConfig
    #: --set factgrass.damping=auto (λ of the sketches' Fisher)
    tunable = {"damping": ("0.00001", "0.0001", "0.001", "0.01", "0.1", "1", "10")}

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import FactGraSSAttributor

        return self.block_attributor(ctx, FactGraSSAttributor, blowup_factor=self.config.blowup)
