"""dvemb: data value embeddings (Wang et al. 2024) through dattri's ``DVEmbAttributor`` — the training
run's own per-step gradients folded backwards into one embedding per example,
eᵢ = Σ_t η_t/B·(I − η_t/B·Σ_{later steps} …)·∇ℓᵢ(w_t), so that eᵢᵀ∇φⱼ(w_T) is i's first-order
contribution to φⱼ through the steps that used it and every step after (dattri resets the
correction at each epoch, as the paper's approximation does).  The run is replayed through the task's
``unroll`` hook (same seed, order and optimiser as the reference) and must end at the context's model;
tasks without the hook are refused before any work.  The recursion is derived for SGD: on an Adam task
it uses the step's learning rate on raw gradients (recorded as ``optimizer``).  Sign: an example whose
steps lowered the query's loss has a positive embedding product, so scores[i, j] = −eᵢᵀ∇φⱼ."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tdabench.api.checks import integer, number
from tdabench.api.config import ConfigError
from tdabench.toolkit.dattri_bridge import DattriMethod, attribution_task, dtype_of, session
from tdabench.toolkit.grads import num_params, per_example_grads, select_params
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.seeds import derive_seed
from tdabench.api.task import Task


@dataclass(frozen=True)
class DVEmbConfig(MethodConfig):
    proj_dim: int = 0                  # 0: full gradients; k > 0: dattri's random projection to k dimensions
    max_gigabytes: float = 2.0         # refuse when the per-step gradients held would exceed this
    tolerance: float = 1e-4            # largest relative gap between the replayed run and the context's model

    def __post_init__(self) -> None:
        integer(self, "dvemb", "proj_dim", "0: full gradients, k > 0: project to k dimensions", minimum=0)
        number(self, "dvemb", "max_gigabytes", "memory allowed for the cached per-step gradients", above=0)
        number(self, "dvemb", "tolerance", "largest relative gap allowed; 1e-4 covers float32 rounding", above=0)


@register_method
class DVEmb(DattriMethod):
    name = "dvemb"
    description = "data value embeddings: per-step gradients of the replayed run, folded backwards (dattri)"
    Config = DVEmbConfig

    def check(self, task: Task) -> None:
        if not task.unrolls:
            raise ConfigError(f"dvemb replays the training run through the Task.unroll hook; task {task.name} "
                              f"cannot: {task.unroll_unavailable()}")

    def fit(self, ctx: Context) -> None:
        from dattri.algorithm import DVEmbAttributor

        unroll = ctx.task.unroll(ctx.task.make_model(ctx.train_seed), torch.arange(ctx.n_train), ctx.train_seed)
        self._check_memory(ctx, unroll)
        model = unroll.model(unroll.initial())                   # replayed in place, step by step
        with session(dtype_of(ctx.model), ctx.seed):
            self._attributor = DVEmbAttributor(task=attribution_task(ctx, model, one_row=True),
                                               proj_dim=self.config.proj_dim or None,
                                               proj_seed=derive_seed(ctx.seed, 0xD5E4B))
            final = self._replay(unroll, model)
            self._check_reproduces(ctx, unroll.model(final))
            self._attributor.cache()
        self._info["optimizer"] = unroll.optimizer.kind
        self._fitted = ctx.model_key or id(ctx.model)

    def _replay(self, unroll: Any, model: torch.nn.Module) -> dict:
        """Run the unrolled steps, caching each step's per-example gradients at its start weights."""
        state, seen, n = unroll.initial(), 0, unroll.data[0].shape[0]
        for t in range(unroll.steps):
            idx, rows = unroll.batch(t)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(state["params"][name])
            self._attributor.cache_gradients(seen // n, rows, idx, unroll.optimizer.lr_at(t))
            state = unroll.step(state, t, unroll.weights(unroll.ones(), t))
            seen += len(idx)
        return state

    def _check_memory(self, ctx: Context, unroll: Any) -> None:
        """The per-step gradients (rows × k) plus dattri's k × k correction matrix must fit the budget."""
        rows = sum(len(s) for s in unroll.schedule)
        dim = self.config.proj_dim or num_params(select_params(ctx.model))
        size = next(ctx.model.parameters()).element_size()
        gigabytes = (rows * dim + dim * dim) * size / 1e9
        self._info = {"cached_gigabytes": gigabytes, "steps": unroll.steps}
        if gigabytes > self.config.max_gigabytes:
            raise ConfigError(f"dvemb would hold {gigabytes:.1f} GB: per-step gradients ({rows} rows × {dim} "
                              f"dimensions) and a {dim} × {dim} correction matrix > dvemb.max_gigabytes="
                              f"{self.config.max_gigabytes}; project them: set --set dvemb.proj_dim=1024 "
                              "(or raise dvemb.max_gigabytes)")

    def _check_reproduces(self, ctx: Context, replayed: torch.nn.Module) -> None:
        values, expected = (ctx.task.measure(m, ctx.query_data) for m in (replayed, ctx.model))
        gap = float((values - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
        self._info["reproduction_gap"] = gap
        if gap > self.config.tolerance:
            raise RuntimeError(f"the replayed run of {ctx.task.name} does not end at the given model (relative gap "
                               f"{gap:.2e} > dvemb.tolerance={self.config.tolerance}): dvemb scores the end of the "
                               "reference run, not a checkpoint from its middle")

    def score(self, ctx: Context) -> Tensor:
        self.fitted(ctx)
        emb = torch.stack(list(self._attributor.embeddings.values())).sum(0)          # shape: [n_train, k]
        g = per_example_grads(ctx.model, ctx.task.measurement, ctx.query_data)         # shape: [n_query, d]
        if self._attributor.projector is not None:
            g = self._attributor.projector(g)
        return -(emb.double() @ g.double().T).float().cpu()                             # shape: [n_train, n_query]
