"""lissa: the influence function with (H + λI)⁻¹∇φⱼ estimated by LiSSA's stochastic Neumann recursion
(Agarwal et al. 2017; Koh & Liang 2017) through dattri's ``IFAttributorLiSSA``: e ← v + (1 − λ/s)·e −
Ĥe/s over ``depth`` steps, Ĥ the Hessian of a random minibatch of ``hessian_batch`` rows, result e/s.
Its fixed point is (H + λI)⁻¹v, reached when ``scaling`` s exceeds H's largest eigenvalue (else the
recursion diverges, reported as non-finite scores); the error falls as ``depth`` grows (tested against
``if``).  score[i, j] = −(1/n)·∇ℓᵢᵀ(H + λI)⁻¹∇φⱼ."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.toolkit.dattri_bridge import DattriMethod, attribution_task, curvature_damping, layer_names
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method


@dataclass(frozen=True)
class LiSSAConfig(MethodConfig):
    damping: float = 1e-3            # λ added to the mean-loss Hessian (plus the task's L2 curvature)
    scaling: float = 50.0            # s > λ_max(H), else the recursion diverges
    depth: int = 1000                # recursion steps per estimate
    repeats: int = 1                 # independent estimates averaged
    hessian_batch: int = 64          # rows of the attribution set per Hessian sample
    query_batch: int = 16            # queries whose recursions run together (vmapped: memory grows with it); 0: ≤ 8 GiB
    train_batch: int = 0             # attribution rows whose per-example gradients are held at once (0: ≤ 8 GiB of them)
    patterns: tuple[str, ...] = ()   # regexes of parameter names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "lissa")
        number(self, "lissa", "damping", "λ added to the Hessian's diagonal", at_least=0)
        number(self, "lissa", "scaling", "s, larger than the Hessian's top eigenvalue", above=0)
        integer(self, "lissa", "depth", "recursion steps per estimate", minimum=1)
        integer(self, "lissa", "repeats", "independent estimates averaged", minimum=1)
        integer(self, "lissa", "hessian_batch", "rows per Hessian sample", minimum=1)
        integer(self, "lissa", "query_batch", "queries whose recursions run together; 0: up to 8 GiB of gradients", minimum=0)
        integer(self, "lissa", "train_batch", "attribution rows per gradient pass; 0: up to 8 GiB of gradients", minimum=0)


@register_method
class LiSSA(DattriMethod):
    name = "lissa"
    description = "influence function, (H+λI)⁻¹ by the LiSSA stochastic recursion (dattri)"
    Config = LiSSAConfig
    tunable = {"damping": ("0.0001", "0.001", "0.01", "0.1", "1", "10")}   # --set lissa.damping=auto (λ)

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import IFAttributorLiSSA

        cfg = self.config
        damping, self._info = curvature_damping(ctx, cfg.damping, cfg.patterns)
        # dattri's damping d enters as (d·s·I + H): pass λ/s so that the fixed point is (H + λI)⁻¹.
        return IFAttributorLiSSA(task=attribution_task(ctx), layer_name=layer_names(ctx.model, cfg.patterns),
                                 device=str(ctx.device), batch_size=min(cfg.hessian_batch, ctx.n_train),
                                 num_repeat=cfg.repeats, recursion_depth=cfg.depth,
                                 damping=damping / cfg.scaling, scaling=cfg.scaling)
