"""if: the exact damped influence function, score[i, j] = −(1/n)·∇φ_jᵀ (H + λI)⁻¹ ∇ℓ_i, with the
full Hessian (or Gauss-Newton matrix) of the training objective held explicitly — the reference for
small models.  (1/n): including example i adds ℓ_i/n to the mean-loss objective, so the score is the
first-order change of φ_j, comparable with an actual retrain.  The file is not called ``if.py``
because ``if`` is a Python keyword; the method's name is ``if``.

Numerical health: away from a minimum (early stopping, a non-convex model) the Hessian is
indefinite and H + λI may be singular or indefinite, where the solve returns meaningless numbers
without complaint.  ``score`` therefore computes λ_min(H), the smallest eigenvalue of the undamped
curvature (float64), and treats the damped system as not positive definite when λ_min(H) + λ ≤ a
floor of 1e-8 × max|eig(H)| (below it a float64 solve loses more than half its digits).  Then, with
``indefinite="raise"``, the damping used is λ_used = max(λ, floor) − λ_min(H): the spectrum is shifted
so that the smallest eigenvalue of H + λ_used·I equals the requested λ (the floor when λ is below it),
the same conditioning the user asked for on a positive definite H, and a warning names both; with
``indefinite="refuse"`` it raises FloatingPointError naming the damping that would fix it.  Either
way the run record gets ``min_eigenvalue``, ``damping_requested``, ``damping_used``, ``damping_raised``
and ``min_eigenvalue_damped`` (of H + λ_used·I, = λ_min(H) + λ_used: a shift moves every eigenvalue by
the same amount, so no second decomposition is needed; the Cholesky factorization that solves the
damped system then confirms that it is positive definite)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

from tdabench.grads import flat_function, num_params, per_example_grads, select_params
from tdabench.method import Context, Method, MethodConfig
from tdabench.registry import register_method
from tdabench.task import Batch, Task, batches

from tdabench.checks import choices_and_patterns, integer, number

log = logging.getLogger("tdabench")
#: Relative floor on λ_min(H + λI): below 1e-8 × max|eig| a float64 solve keeps fewer than 8 digits.
RELATIVE_FLOOR = 1e-8


@dataclass(frozen=True)
class ExactIFConfig(MethodConfig):
    damping: float = 1e-3                               # λ added to the curvature's diagonal
    curvature: Literal["hessian", "gauss_newton"] = "hessian"   # the objective's Hessian, or its Gauss-Newton part
    max_params: int = 10_000                            # the d×d matrix is held in float64
    batch_size: int = 64                                # examples per curvature / gradient batch
    patterns: tuple[str, ...] = ()                      # regexes of parameter names (empty: all)
    indefinite: Literal["raise", "refuse"] = "raise"    # H+λI not positive definite: raise λ (warned, recorded) or refuse

    def __post_init__(self) -> None:
        choices_and_patterns(self, "if")
        number(self, "if", "damping", "λ added to the curvature's diagonal; 0: none", at_least=0)
        integer(self, "if", "max_params", "the largest d for which the d×d curvature is built", minimum=1)
        integer(self, "if", "batch_size", "examples per curvature / gradient batch", minimum=1)


def objective_hessian(task: Task, model: nn.Module, data: Batch, params: dict[str, Tensor], batch_size: int) -> Tensor:
    """∇² of ``mean(loss) + regularizer`` over ``data``, shape ``[d, d]`` float64."""
    n = data[0].shape[0]
    reg, w = flat_function(model, params, task.regularizer)
    total = hessian(reg)(w).double().contiguous()     # an expanded zero when R does not depend on w
    for b in batches(data, batch_size):
        f, _ = flat_function(model, params, lambda m, b=b: task.loss(m, b).sum() / n)
        total += hessian(f)(w).double()
    return total


def objective_gauss_newton(task: Task, model: nn.Module, data: Batch, params: dict[str, Tensor], batch_size: int) -> Tensor:
    """Σ_i Jᵢᵀ ∇²_out ℓ_i Jᵢ / n + ∇² regularizer, shape ``[d, d]`` float64 (PSD for convex losses)."""
    n = data[0].shape[0]
    reg, w = flat_function(model, params, task.regularizer)
    total = hessian(reg)(w).double().contiguous()     # an expanded zero when R does not depend on w
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

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._health: dict[str, Any] = {}

    def extras(self) -> dict[str, Any]:
        """The curvature's health: its smallest eigenvalue and the damping requested and used."""
        return dict(self._health)

    def _check_curvature(self, curv: Tensor) -> float:
        """The damping to use on ``curv`` (float64, undamped) under ``indefinite``; records the
        health numbers (see the module docstring for the policy)."""
        cfg = self.config
        eig = torch.linalg.eigvalsh(curv.double())                                 # ascending, shape: [d]
        lowest, scale = float(eig[0]), float(eig.abs().max())
        floor = RELATIVE_FLOOR * scale if scale > 0 else RELATIVE_FLOOR             # H = 0: any λ > 0 will do
        used, raised = cfg.damping, lowest + cfg.damping <= floor
        if raised:
            used = max(cfg.damping, floor) - lowest      # λ_min(H + used·I) = max(λ, floor)
            what = "indefinite" if lowest < 0 else "singular to working precision"
            if cfg.indefinite == "refuse":
                raise FloatingPointError(
                    f"if: H + λI is not positive definite: the {cfg.curvature} curvature is {what} (smallest "
                    f"eigenvalue {lowest:.4g}, largest |eigenvalue| {scale:.4g}) and if.damping={cfg.damping:g} "
                    f"does not lift it above {floor:.3g}; set --set if.damping={_round_up(used):g} (or "
                    f"if.indefinite=raise to do that automatically, or if.curvature=gauss_newton)")
            log.warning("if: the %s curvature is %s (smallest eigenvalue %.4g): damping raised from "
                        "if.damping=%g to %.6g so that the smallest eigenvalue of H + λI is %.3g",
                        cfg.curvature, what, lowest, cfg.damping, used, lowest + used)
        self._health = {"min_eigenvalue": lowest, "max_abs_eigenvalue": scale, "damping_requested": cfg.damping,
                        "damping_used": used, "damping_raised": raised, "min_eigenvalue_damped": lowest + used}
        return used

    def check(self, task: Task) -> None:
        """Refuse a model above ``max_params`` before any training (its d×d matrix would not be built)."""
        self._refuse_size(num_params(select_params(task.make_model(0), self.config.patterns)))

    def _refuse_size(self, d: int) -> None:
        if d > self.config.max_params:
            raise ValueError(f"if: the model has {d:,} parameters in scope, above if.max_params={self.config.max_params:,} "
                             f"(a {d}×{d} matrix); restrict if.patterns or use an approximate method (ekfac, bif)")

    def score(self, ctx: Context) -> Tensor:
        cfg = self.config
        params = select_params(ctx.model, cfg.patterns)
        d = num_params(params)
        self._refuse_size(d)
        build = objective_hessian if cfg.curvature == "hessian" else objective_gauss_newton
        curv = build(ctx.task, ctx.model, ctx.train_data, params, cfg.batch_size)
        damping = self._check_curvature(curv)
        curv += damping * torch.eye(d, dtype=curv.dtype, device=curv.device)
        g_train = per_example_grads(ctx.model, ctx.task.loss, ctx.train_data, params, cfg.batch_size).double()
        g_query = per_example_grads(ctx.model, ctx.task.measurement, ctx.query_data, params, cfg.batch_size).double()
        # Cholesky: half the cost of an LU solve, and it checks that the damped matrix itself is positive definite.
        chol, info = torch.linalg.cholesky_ex(curv)
        if int(info) != 0:
            raise FloatingPointError(f"if: H + λI with λ={damping:.6g} failed its Cholesky factorization (smallest "
                                     f"eigenvalue {self._health['min_eigenvalue_damped']:.4g}); raise if.damping")
        solved = torch.cholesky_solve(g_query.T, chol)                               # shape: [d, n_query]
        return (-(g_train @ solved) / ctx.n_train).float()                           # shape: [n_train, n_query]


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (a damping to type on the command line)."""
    if value <= 0:
        return value
    exponent = math.floor(math.log10(value)) - 1
    return math.ceil(value / 10**exponent) * 10**exponent
