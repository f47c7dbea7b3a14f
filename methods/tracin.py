"""tracin: TracIn-CP (Pruthi et al. 2020; 004 Remark 4.3, Eq. 24) — the unrolled influence with the
Jacobian products dropped: score[i, j] = −Σ_{t∈C} η_t ∇ℓ_i(w_t)·∇φ_j(w_t) over checkpoints C of the
reference run (sign: an example whose gradient steps lowered the query loss scores negative)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method

from tdabench.api.checks import choices_and_patterns, integer
from tdabench.methods.gradsim import GradSimConfig, gradient_features


@dataclass(frozen=True)
class TracInConfig(MethodConfig):
    checkpoints: int = 5                       # |C|, taken along the reference run
    spacing: Literal["even", "log"] = "even"   # log: denser early in training
    weight: Literal["lr", "lr_x_steps"] = "lr"  # lr_x_steps: η_t times steps since the previous checkpoint
    proj_dim: int = 0                          # 0: exact gradients; k > 0: seeded Gaussian projection
    batch_size: int = 64                       # examples per per-example-gradient batch
    patterns: tuple[str, ...] = ()             # regexes of parameter names (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "tracin")
        integer(self, "tracin", "checkpoints", "the checkpoints |C| the gradients are summed over", minimum=1)
        integer(self, "tracin", "proj_dim", "0: exact gradients, k > 0: project to k dimensions", minimum=0)
        integer(self, "tracin", "batch_size", "examples per gradient batch", minimum=1)


@register_method
class TracIn(Method):
    name = "tracin"
    description = "TracIn-CP: −Σ_t η_t ∇ℓ_i(w_t)·∇φ_j(w_t) over training checkpoints"
    Config = TracInConfig
    #: --set tracin.checkpoints=auto (checkpoints of the reference run)
    tunable = {"checkpoints": ("1", "2", "5", "10")}

    @property
    def needs_checkpoints(self) -> int:
        return self.config.checkpoints

    @property
    def checkpoint_spacing(self) -> str:
        return self.config.spacing

    def score(self, ctx: Context) -> Tensor:
        cfg = self.config
        self.check_checkpoints(ctx)
        grads = GradSimConfig(proj_dim=cfg.proj_dim, batch_size=cfg.batch_size, patterns=cfg.patterns)
        model = copy.deepcopy(ctx.model)
        total = torch.zeros(ctx.n_train, ctx.n_query, device=ctx.device, dtype=torch.float64)
        for ckpt in ctx.checkpoints:
            model.load_state_dict(ckpt.state)
            g_train, g_query = gradient_features(ctx, grads, model)
            weight = ckpt.lr * (ckpt.steps_since_previous if cfg.weight == "lr_x_steps" else 1)
            total -= weight * (g_train.double() @ g_query.double().T)      # shape: [n_train, n_query]
        return total.float()
