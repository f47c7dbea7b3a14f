"""cg: the influence function with (H + λI)⁻¹∇φⱼ solved by conjugate gradient on Hessian-vector
products (dattri's ``IFAttributorCG``; Koh & Liang 2017) — the explicit ``if`` without the d×d matrix.
H is the Hessian of the mean training loss over the whole attribution set; score[i, j] =
−(1/n)·∇ℓᵢᵀ(H + λI)⁻¹∇φⱼ.  With ``max_iter`` ≥ d it equals ``if`` (tested); fewer iterations trade
accuracy for time.  CG needs H + λI positive definite: away from a minimum raise ``damping``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.toolkit.dattri_bridge import DattriMethod, attribution_task, curvature_damping, layer_names
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method


@dataclass(frozen=True)
class CGConfig(MethodConfig):
    damping: float = 1e-3            # λ added to the mean-loss Hessian (plus the task's L2 curvature)
    max_iter: int = 50               # CG iterations per query (exact after d iterations in exact arithmetic)
    tol: float = 1e-7                # stop when the residual norm falls below this
    query_batch: int = 16            # queries solved together (vmapped: 200 digits queries at once took 10 GB); 0: all
    patterns: tuple[str, ...] = ()   # regexes of parameter names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "cg")
        number(self, "cg", "damping", "λ added to the Hessian's diagonal", at_least=0)
        integer(self, "cg", "max_iter", "conjugate-gradient iterations", minimum=1)
        number(self, "cg", "tol", "residual norm at which CG stops", above=0)
        integer(self, "cg", "query_batch", "queries solved together; 0: all", minimum=0)


@register_method
class CG(DattriMethod):
    name = "cg"
    description = "influence function, (H+λI)⁻¹ by conjugate gradient on HVPs (dattri)"
    Config = CGConfig
    tunable = {"damping": ("0.0001", "0.001", "0.01", "0.1", "1", "10")}   # --set cg.damping=auto (λ)

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import IFAttributorCG

        cfg = self.config
        damping, self._info = curvature_damping(ctx, cfg.damping, cfg.patterns)
        return IFAttributorCG(task=attribution_task(ctx), layer_name=layer_names(ctx.model, cfg.patterns),
                              device=str(ctx.device), max_iter=cfg.max_iter, tol=cfg.tol, regularization=damping)
