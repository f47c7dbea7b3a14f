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
from tdabench.toolkit.grads import num_params, select_params
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method


@dataclass(frozen=True)
class CGConfig(MethodConfig):
    damping: float = 1e-3            # λ added to the mean-loss Hessian (plus the task's L2 curvature)
    max_iter: int = 50               # CG iterations per query, all run (dattri 0.3 has no residual test); at most d
    query_batch: int = 16            # queries solved together (vmapped: 200 digits queries at once took 10 GB); 0: ≤ 8 GiB
    hessian_batch: int = 0           # rows per piece of the Hessian-vector products over the attribution set (0: all at once)
    train_batch: int = 0             # attribution rows whose per-example gradients are held at once (0: ≤ 8 GiB of them)
    patterns: tuple[str, ...] = ()   # regexes of parameter names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "cg")
        number(self, "cg", "damping", "λ added to the Hessian's diagonal", at_least=0)
        integer(self, "cg", "max_iter", "conjugate-gradient iterations", minimum=1)
        integer(self, "cg", "query_batch", "queries solved together; 0: up to 8 GiB of gradients", minimum=0)
        integer(self, "cg", "hessian_batch", "rows per Hessian-vector product piece; 0: all", minimum=0)
        integer(self, "cg", "train_batch", "attribution rows per gradient pass; 0: up to 8 GiB of gradients", minimum=0)


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
        # CG is exact after d steps; a step after its residual reached 0 divides 0 by 0 (dattri stops on no residual)
        self._info["iterations"] = min(cfg.max_iter, num_params(select_params(ctx.model, cfg.patterns)))
        return IFAttributorCG(task=attribution_task(ctx, hessian_batch=cfg.hessian_batch), layer_name=layer_names(ctx.model, cfg.patterns),
                              device=str(ctx.device), max_iter=self._info["iterations"], regularization=damping)
