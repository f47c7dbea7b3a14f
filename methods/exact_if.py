"""if: the exact damped influence function, score[i, j] = −(1/n)·∇φ_jᵀ (H + λI)⁻¹ ∇ℓ_i, with the
full Hessian (or Gauss-Newton matrix) of the training objective held explicitly — the reference for
small models.  (1/n): including example i adds ℓ_i/n to the mean-loss objective, so the score is the
first-order change of φ_j, comparable with an actual retrain.  The file is not called ``if.py``
because ``if`` is a Python keyword; the method's name is ``if``.

Defaults (issue 34): the Gauss-Newton matrix G (positive semi-definite, what EK-FAC approximates)
with λ = ``relative_damping`` × λ_max(G) = 0.01·λ_max, so the damped matrix's condition number is at
most 101 whatever the scale of the task's loss.  ``benchmarks/if_curvature.py`` (its tables in
``results/benchmarks/``) compared it with the old default (the Hessian at a fixed λ = 10⁻³, raised
when indefinite), with kronfluence's 0.1 × mean eigenvalue and with other ratios, on the built-in
tasks and on the unseen family of ``tests/unseen_tasks.py``: it was never worse than the old default
and better on digits, and no single ratio was best everywhere (the tuned λ/λ_max ranged from 10⁻³ to
≥ 0.3) — which is what a tuned row is for.  An absolute ``damping`` overrides the relative one.

Numerical health: away from a minimum (early stopping, a non-convex model) the Hessian is
indefinite and H + λI may be singular or indefinite, where the solve returns meaningless numbers
without complaint.  ``score`` therefore computes λ_min, the smallest eigenvalue of the undamped
curvature (float64), and treats the damped system as not positive definite when λ_min + λ ≤ a
floor of 1e-8 × max|eig| (below it a float64 solve loses more than half its digits).  Then, with
``indefinite="raise"``, the damping used is λ_used = max(λ, floor) − λ_min: the spectrum is shifted
so that the smallest eigenvalue of H + λ_used·I equals the requested λ (the floor when λ is below it),
the same conditioning the user asked for on a positive definite H, and a warning names both; with
``indefinite="refuse"`` it raises FloatingPointError naming the damping that would fix it.  (The old
default, ``--set if.curvature=hessian --set if.damping=0.001``, is this "raise" policy.)  Either
way the run record gets ``curvature``, ``min_eigenvalue``, ``damping_rule`` (absolute or relative),
``damping_requested``, ``damping_used``, ``damping_raised`` and ``min_eigenvalue_damped`` (of
H + λ_used·I, = λ_min + λ_used: a shift moves every eigenvalue by the same amount, so no second
decomposition is needed; the Cholesky factorization that solves the damped system then confirms
that it is positive definite)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

from tdabench.toolkit.grads import flat_function, num_params, per_example_grads, select_params
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Batch, Task, batches

from tdabench.api.checks import choices_and_patterns, integer, number

log = logging.getLogger("tdabench")
#: Relative floor on λ_min(H + λI): below 1e-8 × max|eig| a float64 solve keeps fewer than 8 digits.
RELATIVE_FLOOR = 1e-8


@dataclass(frozen=True)
class ExactIFConfig(MethodConfig):
    damping: Optional[float] = None                     # λ added to the curvature's diagonal; None: relative_damping × λ_max
    relative_damping: float = 0.01                      # λ / λ_max(curvature) when damping is None (condition ≤ 1/r + 1)
    curvature: Literal["gauss_newton", "hessian"] = "gauss_newton"   # the Gauss-Newton matrix (PSD), or the objective's Hessian
    max_params: int = 10_000                            # the d×d matrix is held in float64
    batch_size: int = 64                                # examples per curvature / gradient batch
    patterns: tuple[str, ...] = ()                      # regexes of parameter names (empty: all)
    indefinite: Literal["raise", "refuse"] = "raise"    # H+λI not positive definite: raise λ (warned, recorded) or refuse

    def __post_init__(self) -> None:
        choices_and_patterns(self, "if")
        number(self, "if", "damping", "λ added to the curvature's diagonal; 0: none; none: relative_damping × "
               "the largest eigenvalue", at_least=0, optional=True)
        number(self, "if", "relative_damping", "λ as a fraction of the curvature's largest eigenvalue", above=0)
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
    tunable = {"relative_damping": ("0.0001", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3")}

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._health: dict[str, Any] = {}

    def extras(self) -> dict[str, Any]:
        """The curvature's health: its smallest eigenvalue and the damping requested and used."""
        return dict(self._health)

    def _check_curvature(self, curv: Tensor, kind: str) -> float:
        """The damping to use on ``curv`` (float64, undamped) under ``indefinite``; records the
        health numbers (see the module docstring for the policy)."""
        cfg = self.config
        eig = torch.linalg.eigvalsh(curv.double())                                 # ascending, shape: [d]
        lowest, scale = float(eig[0]), float(eig.abs().max())
        floor = RELATIVE_FLOOR * scale if scale > 0 else RELATIVE_FLOOR             # H = 0: any λ > 0 will do
        relative = cfg.damping is None
        requested = cfg.relative_damping * scale if relative else cfg.damping
        used, raised = requested, lowest + requested <= floor
        if raised:
            used = max(requested, floor) - lowest        # λ_min(H + used·I) = max(λ, floor)
            what = "indefinite" if lowest < 0 else "singular to working precision"
            if cfg.indefinite == "refuse":
                raise FloatingPointError(
                    f"if: H + λI is not positive definite: the {kind} curvature is {what} (smallest "
                    f"eigenvalue {lowest:.4g}, largest |eigenvalue| {scale:.4g}) and the damping {requested:.4g} "
                    f"does not lift it above {floor:.3g}; set --set if.damping={_round_up(used):g} (or "
                    f"if.indefinite=raise to do that automatically, or if.curvature=gauss_newton)")
            log.warning("if: the %s curvature is %s (smallest eigenvalue %.4g): damping raised from "
                        "%g to %.6g so that the smallest eigenvalue of H + λI is %.3g",
                        kind, what, lowest, requested, used, lowest + used)
        rule = f"{cfg.relative_damping:g} × largest |eigenvalue|" if relative else "absolute (if.damping)"
        self._health = {"curvature": kind, "min_eigenvalue": lowest, "max_abs_eigenvalue": scale,
                        "damping_rule": rule, "damping_requested": requested, "damping_used": used,
                        "damping_raised": raised, "min_eigenvalue_damped": lowest + used}
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
        kind = cfg.curvature if ctx.task.has_outputs else "hessian"
        if kind != cfg.curvature:
            log.info("if: task %s exposes no outputs()/output_loss(), which Gauss-Newton curvature needs: using "
                     "its Hessian (indefinite: %s)", ctx.task.name, cfg.indefinite)
        build = objective_hessian if kind == "hessian" else objective_gauss_newton
        curv = build(ctx.task, ctx.model, ctx.train_data, params, cfg.batch_size)
        damping = self._check_curvature(curv, kind)
        if kind != cfg.curvature:
            self._health["curvature_fallback"] = "the task exposes no outputs()/output_loss() (Gauss-Newton needs them)"
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
