"""arnoldi: the influence function restricted to H's top eigenvectors, found by Arnoldi iteration on
Hessian-vector products (Schioppa et al. 2022) through dattri's ``IFAttributorArnoldi``:
score[i, j] = −(1/n)·Σ_k (vₖᵀ∇ℓᵢ)(vₖᵀ∇φⱼ)/(μₖ + λ) over the ``proj_dim`` eigenpairs (μₖ, vₖ) of largest
|μ|.  With every eigenvector it equals ``if`` (tested).  ``proj_dim`` above the parameter count or
``max_iter`` − 1 uses as many as there are; the run record says how many.  Away from a minimum H is
indefinite and a kept eigenvalue of H + λI can be negative (dattri divides by its square root, which
would make every score NaN): ``fit`` finds the eigenpairs and, with ``indefinite="raise"`` (the
default, as ``if`` does with its Hessian), raises λ by the requested λ minus the smallest kept
eigenvalue of H + λI (which would lift that eigenvalue to λ), warns and runs the iteration again (the
eigenpairs kept are then those of largest |μ + λ|, so the smallest kept may lie higher); with ``indefinite="refuse"`` it refuses,
naming the damping that would make them all positive.  The run record has the smallest kept eigenvalue
and the damping used."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.toolkit.dattri_bridge import (
    DattriMethod, attribution_task, curvature_damping, dtype_of, layer_names, session,
)
from tdabench.toolkit.grads import num_params, select_params
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.seeds import derive_seed

log = logging.getLogger("tdabench")


@dataclass(frozen=True)
class ArnoldiConfig(MethodConfig):
    damping: float = 1e-3            # λ added to the kept eigenvalues (plus the task's L2 curvature)
    proj_dim: int = 100              # eigenvectors kept (top |μ|)
    max_iter: int = 200              # Arnoldi iterations (Krylov dimension + 1)
    query_batch: int = 0             # queries whose gradients are held and transformed together (0: ≤ 8 GiB of them)
    hessian_batch: int = 0           # rows per piece of the Hessian-vector products over the attribution set (0: all at once)
    train_batch: int = 0             # attribution rows whose per-example gradients are held at once (0: ≤ 8 GiB of them)
    patterns: tuple[str, ...] = ()   # regexes of parameter names (empty: all)
    indefinite: Literal["raise", "refuse"] = "raise"   # a kept eigenvalue of H + λI ≤ 0: raise λ (warned) or refuse

    def __post_init__(self) -> None:
        choices_and_patterns(self, "arnoldi")
        number(self, "arnoldi", "damping", "λ added to each kept eigenvalue", at_least=0)
        integer(self, "arnoldi", "proj_dim", "eigenvectors kept", minimum=1)
        integer(self, "arnoldi", "max_iter", "Arnoldi iterations", minimum=2)
        integer(self, "arnoldi", "query_batch", "queries per pass; 0: up to 8 GiB of gradients", minimum=0)
        integer(self, "arnoldi", "hessian_batch", "rows per Hessian-vector product piece; 0: all", minimum=0)
        integer(self, "arnoldi", "train_batch", "attribution rows per gradient pass; 0: up to 8 GiB of gradients", minimum=0)


@register_method
class Arnoldi(DattriMethod):
    name = "arnoldi"
    description = "influence function on the Hessian's top eigenvectors by Arnoldi iteration (dattri)"
    Config = ArnoldiConfig
    #: --set arnoldi.damping=auto (λ on the kept eigenvalues; too small a one is refused where H is indefinite)
    tunable = {"damping": ("0.0001", "0.001", "0.01", "0.1", "1", "10")}

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import IFAttributorArnoldi

        cfg = self.config
        damping, self._info = curvature_damping(ctx, cfg.damping, cfg.patterns)
        damping = getattr(self, "_raised", None) or damping
        d = num_params(select_params(ctx.model, cfg.patterns))
        iters = min(cfg.max_iter, d + 1)
        self._info["eigenvectors"] = min(cfg.proj_dim, iters - 1)
        return IFAttributorArnoldi(task=attribution_task(ctx, hessian_batch=cfg.hessian_batch), layer_name=layer_names(ctx.model, cfg.patterns),
                                   device=str(ctx.device), proj_dim=self._info["eigenvectors"], max_iter=iters,
                                   regularization=damping, seed=derive_seed(ctx.seed, 0xA5401D))

    def fit(self, ctx: Context) -> None:
        self._raised = None
        super().fit(ctx)
        eigenvalues = self._kept(ctx)
        if eigenvalues is None:
            return
        smallest = float(eigenvalues.min())
        if smallest <= 0 and self.config.indefinite == "raise" and not breakdown_zeros(eigenvalues):
            total = float(self._info.get("damping_total", self.config.damping))
            floor = 1e-6 * float(eigenvalues.abs().max())
            first = smallest
            self._raised = total + max(total, floor) - smallest      # the smallest kept one becomes max(λ, floor)
            log.warning("arnoldi: the Hessian is indefinite at this model (smallest kept eigenvalue of H + λI %.4g "
                        "at λ = %g): damping raised to %.6g (arnoldi.indefinite=refuse stops instead)",
                        smallest, total, self._raised)
            super().fit(ctx)
            eigenvalues = self._kept(ctx)
            smallest = float(eigenvalues.min())
            self._info.update(damping_raised=True, damping_used=self._raised, min_eigenvalue_at_requested=first)
        self._info["min_eigenvalue_damped"] = smallest
        broken = breakdown_zeros(eigenvalues)
        if broken:
            raise FloatingPointError(
                f"arnoldi: {broken} of the {len(eigenvalues)} kept eigenvalues are 0 to rounding whatever the "
                f"damping: the Arnoldi iteration broke down (its Krylov space has fewer directions than "
                f"arnoldi.proj_dim={len(eigenvalues)}); set --set arnoldi.proj_dim={len(eigenvalues) - broken} (or fewer)")
        if smallest <= 0:
            need = self.config.damping - smallest * 1.5
            raise FloatingPointError(
                f"arnoldi: {int((eigenvalues <= 0).sum())} of the {len(eigenvalues)} kept eigenvalues of H + λI are "
                f"not positive (smallest {smallest:.3g}): the Hessian is indefinite at this model; "
                f"set --set arnoldi.damping={need:.2g} (or larger)")


    def _kept(self, ctx: Context) -> Tensor | None:
        with session(dtype_of(ctx.model), ctx.seed):
            return _eigenvalues(self._attributor, num_params(select_params(ctx.model, self.config.patterns)))


#: A kept eigenvalue of H + λI this much smaller than the largest is a zero the iteration padded in.
BREAKDOWN = 1e-5


def breakdown_zeros(eigenvalues: Tensor) -> int:
    """How many kept eigenvalues are zeros of a broken-down Arnoldi iteration (|μ| ≤ BREAKDOWN · max|μ|),
    not of the damped curvature: a genuine eigenvalue of H + λI falls to zero only where H has one at
    exactly −λ, which no damping setting reproduces (on the mnist MLP five such zeros stayed below 3e-7
    at λ = 0.05 and at λ = 0.1, while the rest were ≥ 0.09)."""
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return int((eigenvalues.abs() <= BREAKDOWN * scale).sum()) if scale > 0 else 0


def _eigenvalues(attributor: Any, d: int) -> Tensor | None:
    """The kept eigenvalues of H + λI: projecting a zero vector makes dattri compute the eigenpairs, which
    its projector object (held by the projection function's closure) keeps; None if it is not there."""
    project = attributor.arnoldi_projectors[0]
    with torch.no_grad():
        project(torch.zeros(1, d, dtype=torch.get_default_dtype()))
    for cell in project.__closure__ or ():
        values = getattr(cell.cell_contents, "eigvals", None)
        if isinstance(values, Tensor):
            return values.detach()
    return None
