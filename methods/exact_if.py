"""if: the exact damped influence function, score[i, j] = −(1/n)·∇φ_jᵀ (H + λI)⁻¹ ∇ℓ_i, with the
full Hessian (or Gauss-Newton matrix) of the training objective held explicitly — the reference for
small models.  (1/n): including example i adds ℓ_i/n to the mean-loss objective, so the score is the
first-order change of φ_j, comparable with an actual retrain.  The file is not called ``if.py``
because ``if`` is a Python keyword; the method's name is ``if``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

from tdabench.grads import flat_function, num_params, per_example_grads, select_params
from tdabench.method import Context, Method, MethodConfig
from tdabench.registry import register_method
from tdabench.task import Batch, Task, batches


@dataclass(frozen=True)
class ExactIFConfig(MethodConfig):
    damping: float = 1e-3                               # λ added to the curvature's diagonal
    curvature: Literal["hessian", "gauss_newton"] = "hessian"   # the objective's Hessian, or its Gauss-Newton part
    max_params: int = 10_000                            # the d×d matrix is held in float64
    batch_size: int = 64                                # examples per curvature / gradient batch
    patterns: tuple[str, ...] = ()                      # regexes of parameter names (empty: all)


def objective_hessian(task: Task, model: nn.Module, data: Batch, params: dict[str, Tensor], batch_size: int) -> Tensor:
    """∇² of ``mean(loss) + regularizer`` over ``data``, shape ``[d, d]`` float64."""
    n = data[0].shape[0]
    reg, w = flat_function(model, params, task.regularizer)
    total = hessian(reg)(w).double()
    for b in batches(data, batch_size):
        f, _ = flat_function(model, params, lambda m, b=b: task.loss(m, b).sum() / n)
        total += hessian(f)(w).double()
    return total


def objective_gauss_newton(task: Task, model: nn.Module, data: Batch, params: dict[str, Tensor], batch_size: int) -> Tensor:
    """Σ_i Jᵢᵀ ∇²_out ℓ_i Jᵢ / n + ∇² regularizer, shape ``[d, d]`` float64 (PSD for convex losses)."""
    n = data[0].shape[0]
    reg, w = flat_function(model, params, task.regularizer)
    total = hessian(reg)(w).double()
    for b in batches(data, batch_size):
        f, _ = flat_function(model, params, lambda m, b=b: task.outputs(m, b))
        jac = jacrev(f)(w).double()                                                  # shape: [B, C, d]
        out = task.outputs(model, b).detach()                                        # shape: [B, C]
        h_out = vmap(hessian(lambda o, *e: task.output_loss(o[None], tuple(x[None] for x in e)).sum()))(out, *b)
        total += torch.einsum("bcd,bce,bef->df", jac, h_out.double(), jac) / n       # shape: [d, d]
    return total


@register_method
class ExactIF(Method):
    name = "if"
    description = "exact damped influence function with an explicit Hessian or Gauss-Newton matrix (small models)"
    Config = ExactIFConfig

    def score(self, ctx: Context) -> Tensor:
        cfg = self.config
        params = select_params(ctx.model, cfg.patterns)
        d = num_params(params)
        if d > cfg.max_params:
            raise ValueError(f"if: the model has {d:,} parameters in scope, above if.max_params={cfg.max_params:,} "
                             f"(a {d}×{d} matrix); restrict if.patterns or use an approximate method (ekfac, bif)")
        build = objective_hessian if cfg.curvature == "hessian" else objective_gauss_newton
        curv = build(ctx.task, ctx.model, ctx.train_data, params, cfg.batch_size)
        curv += cfg.damping * torch.eye(d, dtype=curv.dtype, device=curv.device)
        g_train = per_example_grads(ctx.model, ctx.task.loss, ctx.train_data, params, cfg.batch_size).double()
        g_query = per_example_grads(ctx.model, ctx.task.measurement, ctx.query_data, params, cfg.batch_size).double()
        solved = torch.linalg.solve(curv, g_query.T)                                 # shape: [d, n_query]
        return (-(g_train @ solved) / ctx.n_train).float()                           # shape: [n_train, n_query]
