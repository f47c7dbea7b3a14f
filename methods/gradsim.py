"""gradsim: gradient similarity, score[i, j] = −∇ℓ_i · ∇φ_j at the reference model (optionally
cosine-normalised, optionally randomly projected)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tdabench.toolkit.grads import Projector, num_params, per_example_grads, select_params
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method

from tdabench.api.checks import choices_and_patterns, integer


@dataclass(frozen=True)
class GradSimConfig(MethodConfig):
    proj_dim: int = 0                # 0: exact gradients; k > 0: Gaussian projection to k dims
    normalize: bool = False          # cosine similarity instead of the dot product
    batch_size: int = 64             # examples per vmapped gradient batch (bounds memory)
    patterns: tuple[str, ...] = ()   # regexes of parameter names to use (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "gradsim")
        integer(self, "gradsim", "proj_dim", "0: exact gradients, k > 0: project to k dimensions", minimum=0)
        integer(self, "gradsim", "batch_size", "examples per gradient batch", minimum=1)


def gradient_features(ctx: Context, cfg: GradSimConfig, model: torch.nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """Per-example gradients of the training loss ``[n_train, d]`` and of the query measurement
    ``[n_query, d]`` (``d`` = ``proj_dim`` when projecting) at ``model`` (default: the reference)."""
    model = model if model is not None else ctx.model
    params = select_params(model, cfg.patterns)
    proj = Projector(num_params(params), cfg.proj_dim, ctx.seed, ctx.device) if cfg.proj_dim > 0 else None
    g_train = per_example_grads(model, ctx.task.loss, ctx.train_data, params, cfg.batch_size, proj)
    g_query = per_example_grads(model, ctx.task.measurement, ctx.query_data, params, cfg.batch_size, proj)
    return g_train, g_query


@register_method
class GradSim(Method):
    name = "gradsim"
    description = "gradient similarity −∇ℓ_i·∇φ_j (dot or cosine, optional random projection)"
    Config = GradSimConfig
    tunable = {"normalize": ("false", "true")}   # --set gradsim.normalize=auto (dot product or cosine)

    def score(self, ctx: Context) -> Tensor:
        g_train, g_query = gradient_features(ctx, self.config)
        if self.config.normalize:
            g_train = torch.nn.functional.normalize(g_train, dim=1)
            g_query = torch.nn.functional.normalize(g_query, dim=1)
        return -(g_train @ g_query.T).float()  # shape: [n_train, n_query]
