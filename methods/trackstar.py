"""trackstar: TrackStar (Chang et al. 2024, "Scalable Influence and Fact Tracing for LLM Pretraining",
as Bergson describes it).  Per-example gradients are (a) divided element-wise by an optimizer
second-moment estimate, g / sqrt(v + eps), (b) randomly projected to ``proj_dim`` dims with the shared
seeded ``Projector`` and (c) unit-normalised; score[i, j] = −ĝ_train_i · ĝ_query_j (loss gradients
for training examples, ``task.measurement`` gradients for queries; negative = helps a loss query).

We do not have the training run's optimizer state, so ``v`` is an Adam-like second moment computed
in ``fit``: the mean over ``task.fit_data()`` (the attribution set unless the task names its full
training set) of the squared per-example loss gradient, at the reference model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.toolkit.grads import ExampleFn, Projector, num_params, per_example_grads, project_all, select_params
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Batch, batches


@dataclass(frozen=True)
class TrackStarConfig(MethodConfig):
    proj_dim: int = 0                # 0: exact gradients; k > 0: seeded Gaussian projection to k dims
    eps: float = 1e-8                # added to v before the square root (parameters no example moves)
    second_moment: bool = True       # false: no optimizer correction (then gradsim, cosine when normalize)
    normalize: bool = True           # unit-normalise the corrected (projected) gradients
    batch_size: int = 64             # examples per vmapped gradient batch (bounds memory)
    patterns: tuple[str, ...] = ()   # regexes of parameter names to use (empty: all)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "trackstar")
        integer(self, "trackstar", "proj_dim", "0: exact gradients, k > 0: project to k dimensions", minimum=0)
        number(self, "trackstar", "eps", "added to the second moment before its square root", above=0.0)
        integer(self, "trackstar", "batch_size", "examples per gradient batch", minimum=1)


def second_moment(model: nn.Module, fn: ExampleFn, data: Batch, params: dict[str, Tensor], batch_size: int) -> Tensor:
    """Mean over ``data`` of the squared per-example gradient of ``fn``, shape ``[d]`` (float64), one
    batch at a time so that only ``[batch_size, d]`` gradients are ever held."""
    total = torch.zeros(num_params(params), dtype=torch.float64, device=next(iter(params.values())).device)
    for b in batches(data, batch_size):
        total += per_example_grads(model, fn, b, params, batch_size).double().square().sum(0)
    return total / data[0].shape[0]


@register_method
class TrackStar(Method):
    name = "trackstar"
    description = "TrackStar: −cos of second-moment-corrected, randomly projected gradients (Chang et al. 2024)"
    Config = TrackStarConfig
    tunable = {"normalize": ("true", "false")}   # --set trackstar.normalize=auto (unit-normalised or not)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._v: Optional[Tensor] = None      # shape: [d], float64
        self._fitted_for: tuple[int, str] = (0, "")

    def extras(self) -> dict[str, Any]:
        """Statistics of the second-moment estimate v (empty with ``second_moment=false``)."""
        if self._v is None:
            return {}
        v = self._v
        return {"v_mean": float(v.mean()), "v_min": float(v.min()), "v_max": float(v.max()),
                "v_below_eps": float((v < self.config.eps).double().mean())}  # share of entries eps dominates

    def fit(self, ctx: Context) -> None:
        """v at the reference model (query-independent); nothing to do without the correction."""
        self._v, self._fitted_for = None, (id(ctx.model), ctx.model_key)
        if self.config.second_moment:
            params = select_params(ctx.model, self.config.patterns)
            self._v = second_moment(ctx.model, ctx.task.loss, ctx.task.fit_data(), params, self.config.batch_size)

    def score(self, ctx: Context) -> Tensor:
        cfg = self.config
        if self._fitted_for != (id(ctx.model), ctx.model_key):   # score called without fit (or on another model)
            self.fit(ctx)
        params = select_params(ctx.model, cfg.patterns)
        proj = Projector(num_params(params), cfg.proj_dim, ctx.seed, ctx.device) if cfg.proj_dim > 0 else None
        scale = (self._v + cfg.eps).rsqrt() if self._v is not None else None    # shape: [d]

        def features(fn: ExampleFn, data: Batch) -> Tensor:
            def scaled() -> Iterator[Tensor]:
                for b in batches(data, cfg.batch_size):
                    g = per_example_grads(ctx.model, fn, b, params, cfg.batch_size)  # shape: [B, d]
                    yield g * scale.to(g.dtype) if scale is not None else g
            g = project_all(scaled(), proj)                                          # shape: [n, k]
            return torch.nn.functional.normalize(g, dim=1) if cfg.normalize else g

        g_train = features(ctx.task.loss, ctx.train_data)             # shape: [n_train, d or k]
        g_query = features(ctx.task.measurement, ctx.query_data)      # shape: [n_query, d or k]
        return -(g_train @ g_query.T).float()  # shape: [n_train, n_query]
