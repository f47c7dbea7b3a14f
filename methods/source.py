"""source: SOURCE (Bae et al. 2024) as derived in 004 Section 4.2.1 — the unrolled response of
Eq. 20 with training cut into L stationary segments, each with its own EK-FAC curvature.

The reference run's checkpoints are grouped into L segments of ``c`` consecutive checkpoints each
(segment ℓ ends at step T_ℓ).  Per segment (Eq. 25–26):

- effort  η̄_ℓK_ℓ = Σ_{t∈ℓ} lr_t·Δ_t   (Δ_t: the steps a checkpoint covers, lr_t: its learning rate);
- H̄_ℓ ≈ EK-FAC of the mean training loss, fitted by kronfluence at the segment's last checkpoint;
  per tracked module an eigenbasis Q = Q_A ⊗ Q_G and eigenvalues σ (+ ``damping`` λ);
- ḡ_{i,ℓ} = Σ_{t∈ℓ} (lr_t·Δ_t / η̄_ℓK_ℓ)·∇ℓ_i(w_t), the effort-weighted gradient average;
- response filter F_r(σ) = (1 − e^{−η̄_ℓK_ℓσ})/σ (→ η̄_ℓK_ℓ as σ → 0), propagator S(σ) = e^{−η̄_ℓK_ℓσ}.

Scores (Eq. 28, 30; query gradients at the final model w_T as in Eq. 30), in tdabench's sign
(Eq. 20: including example i moves w_T by −Σ_ℓ S_L⋯S_{ℓ+1} r̄_{i,ℓ}):

    score[i, j] = −(1/n) Σ_ℓ ḡ_{i,ℓ}ᵀ F_r^ℓ(H̄_ℓ) S_{ℓ+1}(H̄_{ℓ+1}) ⋯ S_L(H̄_L) ∇φ_j(w_T)

computed query-side: v_L = ∇φ_j, u_ℓ = F_r^ℓ v_ℓ, v_{ℓ−1} = S_ℓ v_ℓ, each operator applied per module
in its eigenbasis; training gradients stream past u_ℓ in chunks, so memory is O(n_query · d).
The 1/n: the reference run minimises the mean loss over all n attribution examples, so example i
enters each step with weight η/n (in expectation b/n · η/b for minibatches), and H̄ is the Hessian
of that mean.  With L = 1 and η̄K → ∞, F_r → 1/σ and the score is −(1/n)∇φ_jᵀ(H̄ + λI)⁻¹∇ℓ_i: the
``ekfac`` method with the same damping (and the exact ``if`` where EK-FAC is exact).  The learning
rate is taken as η whatever the optimiser: an adaptive preconditioner (Adam, Eq. 23) is not modelled.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor, nn

from tdabench.toolkit.grads import ExampleFn, per_example_grads
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Batch, Checkpoint, batches

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.methods.ekfac import INSTALL_HINT, EKFACConfig, eigen_factors, fit_factors

#: Per module ``(Q_G [out, out], Q_A [a, a], σ [out, a])``: one segment's eigenbasis and eigenvalues.
Eigen = dict[str, tuple[Tensor, Tensor, Tensor]]
#: A segment's checkpoints, each with its weight in the segment's gradient average ḡ.
Weighted = list[tuple[Checkpoint, float]]
#: Per module a stack of gradient matrices, shape ``[B, out, a]`` (kronfluence's layout, bias last).
Blocks = dict[str, Tensor]


@dataclass(frozen=True)
class SourceConfig(MethodConfig):
    segments: int = 3                                   # L: stationary segments the run is cut into
    checkpoints_per_segment: int = 1                    # c: checkpoints averaged per segment (L·c are recorded)
    spacing: Literal["even", "log"] = "even"            # checkpoint spacing along the reference run
    damping: float = 0.0                                # λ added to every eigenvalue σ (e.g. a ridge strength)
    strategy: Literal["ekfac", "kfac"] = "ekfac"        # curvature per segment: corrected or K-FAC eigenvalues
    fisher: Literal["auto", "sampled", "empirical"] = "auto"   # as ekfac.fisher
    fit_on: Literal["fit_data", "train"] = "fit_data"   # data the factors are fitted on, as ekfac.fit_on
    patterns: tuple[str, ...] = ()                      # regexes on parameter names choosing Linear/Conv2d modules
    cpu_max_width: int = 8192                           # on CPU, leave out layers wider than this; 0: no limit
    max_examples: Optional[int] = None                  # examples per factor fit (None: all)
    batch_size: int = 64                                # examples per batch (factors and gradients)
    query_batch: int = 0                                # queries per pass (0: all at once); each pass recomputes the training gradients
    precision: Literal["auto", "float32", "float64"] = "auto"  # factor/gradient dtype; auto: the model's

    def __post_init__(self) -> None:
        choices_and_patterns(self, "source")
        integer(self, "source", "segments", "L, the stationary segments the run is cut into", minimum=1)
        integer(self, "source", "checkpoints_per_segment", "c, checkpoints averaged per segment", minimum=1)
        number(self, "source", "damping", "λ added to every eigenvalue; 0: none", at_least=0)
        integer(self, "source", "cpu_max_width", "the widest layer tracked on CPU; 0: no limit", minimum=0)
        integer(self, "source", "max_examples", "examples per factor fit; none: all", minimum=1, optional=True)
        integer(self, "source", "batch_size", "examples per factor and gradient batch", minimum=1)
        integer(self, "source", "query_batch", "queries per pass; 0: all at once", minimum=0)

    def factor_config(self) -> EKFACConfig:
        """The ekfac settings that fit this method's factors (shared fitting and caching)."""
        return EKFACConfig(strategy=self.strategy, fisher=self.fisher, fit_on=self.fit_on, patterns=self.patterns,
                           cpu_max_width=self.cpu_max_width, max_examples=self.max_examples,
                           batch_size=self.batch_size, precision=self.precision)


@dataclass
class Segment:
    """One stationary segment: its checkpoints with gradient weights, effort η̄K and curvature."""

    checkpoints: Weighted                         # (checkpoint, weight in ḡ), weights sum to 1
    effort: float                                 # η̄_ℓ·K_ℓ = Σ lr·Δsteps
    eigen: Eigen


def segment_checkpoints(checkpoints: list[Checkpoint], segments: int) -> list[tuple[Weighted, float]]:
    """Consecutive groups of ``len(checkpoints) / segments`` checkpoints, each with its effort
    Σ lr·Δsteps and the effort weights of its gradient average (uniform when the effort is 0)."""
    c = len(checkpoints) // segments
    out = []
    for s in range(segments):
        group = checkpoints[s * c : (s + 1) * c]
        efforts = [ck.lr * ck.steps_since_previous for ck in group]
        total = float(sum(efforts))
        weights = [e / total for e in efforts] if total > 0 else [1 / len(group)] * len(group)
        out.append((list(zip(group, weights)), total))
    return out


def response_filter(sigma: Tensor, effort: float) -> Tensor:
    """F_r(σ) = (1 − e^{−effort·σ})/σ, with its limit ``effort`` at σ = 0 (σ ≥ 0, float64)."""
    safe = sigma.clamp(min=1e-300)
    return torch.where(sigma > 0, -torch.expm1(-effort * safe) / safe, torch.full_like(sigma, effort))


def apply_eigen(eigen: Eigen, fn: Callable[[Tensor], Tensor], x: Blocks) -> Blocks:
    """``Q fn(σ) Qᵀ x`` per module: rotate into the eigenbasis, scale, rotate back."""
    out = {}
    for name, (qg, qa, sigma) in eigen.items():
        qg, qa, v = qg.to(x[name]), qa.to(x[name]), x[name]                  # v: [B, out, a]
        rotated = qg.T @ v @ qa
        out[name] = qg @ (rotated * fn(sigma).to(rotated)) @ qa.T
    return out


class Layout:
    """Maps the flat per-example gradients of the tracked modules' parameters to per-module
    ``[B, out, a]`` blocks (weight flattened to ``[out, in·k·k]``, bias appended as the last column)."""

    def __init__(self, model: nn.Module, modules: list[str]) -> None:
        self.modules, self.params, self.shapes = modules, {}, []
        for m in modules:
            module, prefix = model.get_submodule(m), f"{m}." if m else ""
            out, cols = module.weight.shape[0], module.weight[0].numel()
            self.params[prefix + "weight"] = module.weight
            if module.bias is not None:
                self.params[prefix + "bias"] = module.bias
            self.shapes.append((out, cols, module.bias is not None))

    def blocks(self, flat: Tensor) -> Blocks:
        """``[B, d]`` → per module ``[B, out, a]``."""
        out, start, b = {}, 0, flat.shape[0]
        for m, (rows, cols, bias) in zip(self.modules, self.shapes):
            parts = [flat[:, start : start + rows * cols].reshape(b, rows, cols)]
            start += rows * cols
            if bias:
                parts.append(flat[:, start : start + rows].reshape(b, rows, 1))
                start += rows
            out[m] = torch.cat(parts, dim=2)
        return out

    def grads(self, model: nn.Module, fn: ExampleFn, data: Batch, batch_size: int, dtype: torch.dtype) -> Blocks:
        """Per-example gradients of ``fn`` at ``model`` (which owns ``self.params``) as blocks."""
        return self.blocks(per_example_grads(model, fn, data, self.params, batch_size).to(dtype))


def dot(a: Blocks, b: Blocks) -> Tensor:
    """Σ_modules ⟨a_i, b_j⟩, shape ``[B_a, B_b]`` float64."""
    return sum(torch.einsum("ioa,joa->ij", a[m], b[m]).double() for m in a)  # type: ignore[return-value]


@register_method
class Source(Method):
    name = "source"
    description = "SOURCE: unrolled influence over L segments, EK-FAC filter (1−e^{−ηKσ})/σ per segment"
    Config = SourceConfig
    #: --set source.damping=auto (λ on every eigenvalue)
    tunable = {"damping": ("0", "0.0001", "0.001", "0.01", "0.1", "1")}
    requires = ("kronfluence",)
    install_hint = INSTALL_HINT

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._segments: list[Segment] = []
        self._modules: list[str] = []
        self._dtype = torch.float32

    @property
    def needs_checkpoints(self) -> int:
        return self.config.segments * self.config.checkpoints_per_segment

    @property
    def checkpoint_spacing(self) -> str:
        return self.config.spacing

    def fit(self, ctx: Context) -> None:
        """Fit (or load) one set of factors per segment, at its last checkpoint."""
        cfg = self.config
        self.check_checkpoints(ctx)   # L·c of them: segments × checkpoints_per_segment
        model, self._segments = copy.deepcopy(ctx.model), []
        for group, effort in segment_checkpoints(ctx.checkpoints, cfg.segments):
            last = group[-1][0]
            model.load_state_dict(last.state)
            key = f"{ctx.model_key or 'unkeyed'}-step{last.step}"
            factors = fit_factors(ctx, model, cfg.factor_config(), key)
            self._modules, self._dtype = factors.modules, factors.dtype
            eigen = {m: tuple(t.to(ctx.device) for t in e) for m, e in eigen_factors(factors).items()}
            self._segments.append(Segment(group, effort, eigen))  # type: ignore[arg-type]

    def score(self, ctx: Context) -> Tensor:
        if not self._segments:
            self.fit(ctx)
        size = self.config.query_batch or ctx.n_query   # the query side holds [queries, out, a] per module, twice
        return torch.cat([self._score(ctx, part) for part in batches(ctx.query_data, size)], dim=1)

    def _score(self, ctx: Context, queries: Batch) -> Tensor:
        """Scores ``[n_train, Q]`` of the Q rows of ``queries``."""
        cfg, lam = self.config, self.config.damping
        model = copy.deepcopy(ctx.model)                     # the final model w_T; checkpoints load into it
        layout = Layout(model, self._modules)
        v = layout.grads(model, ctx.task.measurement, queries, cfg.batch_size, self._dtype)      # [Q, out, a]
        total = torch.zeros(ctx.n_train, queries[0].shape[0], dtype=torch.float64, device=ctx.device)
        for seg in reversed(self._segments):
            u = apply_eigen(seg.eigen, lambda s, e=seg.effort: response_filter(s + lam, e) / ctx.n_train, v)
            for ckpt, weight in seg.checkpoints:
                model.load_state_dict(ckpt.state)
                for start, chunk in self._chunks(ctx):
                    g = layout.grads(model, ctx.task.loss, chunk, cfg.batch_size, self._dtype)   # [chunk, out, a]
                    total[start : start + chunk[0].shape[0]] -= weight * dot(g, u)
            v = apply_eigen(seg.eigen, lambda s, e=seg.effort: torch.exp(-e * (s + lam)), v)
        return total.float()                                                               # [n_train, Q]

    def _chunks(self, ctx: Context) -> list[tuple[int, Batch]]:
        size = 16 * self.config.batch_size
        return [(i * size, b) for i, b in enumerate(batches(ctx.train_data, size))]

    def extras(self) -> dict[str, Any]:
        return {"segments": [{"steps": [c.step for c, _ in s.checkpoints], "effort": s.effort}
                             for s in self._segments]}
