"""regression: generated data, L2-regularised logistic (or linear) regression trained to its
optimum — a strongly convex problem where the classical influence function is exact to first
order.  The reference case for correctness tests.

Every included example carries the fixed weight 1/N (N = attribution set size), whatever the subset:
the objective is  (1/N)·Σ_{i∈S} ℓ_i(w) + (l2/2)·‖w‖².  Including example i is then exactly a 1/N
up-weighting, whose first-order effect on a query is what the IF computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.api.registry import register_task
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig, take
from tdabench.toolkit.batched import train_many_gd
from tdabench.api.unroll import Optimizer, Unroll


@dataclass(frozen=True)
class RegressionConfig(TaskConfig):
    n_train: int = 200          # attribution examples
    n_query: int = 50           # query examples
    dim: int = 10               # input features (the model has dim + 1 parameters)
    kind: Literal["logistic", "linear"] = "logistic"   # logistic: labels in {0,1}; linear: squared loss
    noise: float = 0.5          # label noise (logit noise for logistic, Gaussian for linear)
    l2: float = 0.01            # ridge strength (makes the optimum unique)
    optimizer: Literal["lbfgs", "gd"] = "lbfgs"          # lbfgs: to the optimum; gd: fixed-step full batch
    steps: int = 200            # L-BFGS iterations or GD steps
    lr: float = 0.5             # GD step size (unused by L-BFGS)
    data_seed: int = 0          # the generated data set

    def __post_init__(self) -> None:
        choices_and_patterns(self, "task")
        integer(self, "task", "n_train", "attribution examples", minimum=2)
        integer(self, "task", "n_query", "query examples", minimum=1)
        integer(self, "task", "dim", "input features", minimum=1)
        number(self, "task", "noise", "label noise", at_least=0)
        number(self, "task", "l2", "ridge strength", at_least=0)
        integer(self, "task", "steps", "L-BFGS iterations or GD steps", minimum=1)
        number(self, "task", "lr", "the GD step size", above=0)
        integer(self, "task", "data_seed", "the data set's seed")


@register_task
class Regression(Task):
    name = "regression"
    version = "1"
    description = "generated data, ridge-regularised logistic/linear regression (float64) trained to the optimum"
    Config = RegressionConfig

    @cached_property
    def _data(self) -> tuple[Batch, Batch]:
        c = self.config
        gen = torch.Generator().manual_seed(c.data_seed)
        n = c.n_train + c.n_query
        x = torch.randn(n, c.dim, generator=gen, dtype=torch.float64)                  # shape: [n, dim]
        w = torch.randn(c.dim, generator=gen, dtype=torch.float64) / c.dim ** 0.5
        signal = x @ w + c.noise * torch.randn(n, generator=gen, dtype=torch.float64)
        y = (signal > 0).double() if c.kind == "logistic" else signal                 # shape: [n]
        x, y = x.to(self.device), y.to(self.device)
        return (x[: c.n_train], y[: c.n_train]), (x[c.n_train :], y[c.n_train :])

    def train_data(self) -> Batch:
        return self._data[0]

    def query_data(self) -> Batch:
        return self._data[1]

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(self.config.dim, 1).double().to(self.device)

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch[0])  # shape: [B, 1]

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        out, y = outputs.squeeze(-1), batch[1]                                       # shape: [B]
        if self.config.kind == "logistic":
            return F.binary_cross_entropy_with_logits(out, y, reduction="none")
        return 0.5 * (out - y) ** 2

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)

    def regularizer(self, model: nn.Module) -> Tensor:
        return self.penalty(model)

    def penalty(self, params: "dict[str, Tensor] | nn.Module") -> Tensor:
        """(l2/2)·‖w‖² of a parameter dict or a model."""
        values = params.values() if isinstance(params, dict) else params.parameters()
        return 0.5 * self.config.l2 * sum((p**2).sum() for p in values)

    def objective(self, model: nn.Module, indices: Tensor) -> Tensor:
        """(1/N)·Σ_{i∈indices} ℓ_i + regulariser, with N the full attribution set size."""
        return self.loss(model, take(self.train_data(), indices)).sum() / self.n_train + self.regularizer(model)

    def total_steps(self, n_examples: int) -> int:
        return self.config.steps

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        c = self.config
        if c.optimizer == "lbfgs":
            opt: torch.optim.Optimizer = torch.optim.LBFGS(
                model.parameters(), lr=1.0, max_iter=c.steps, tolerance_grad=1e-12,
                tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")
        else:
            opt = torch.optim.SGD(model.parameters(), lr=c.lr)
        lr = 1.0 if c.optimizer == "lbfgs" else c.lr
        wanted = set(checkpoint_steps)
        if on_checkpoint is not None and 0 in wanted:
            on_checkpoint(0, model, lr)

        def closure() -> Tensor:
            opt.zero_grad()
            value = self.objective(model, indices)
            value.backward()
            return value

        if c.optimizer == "lbfgs":   # one call runs every iteration: only the end point is a checkpoint
            if wanted - {0, c.steps}:
                raise ValueError("intermediate checkpoints need a step-by-step optimiser: set task.optimizer=gd")
            opt.step(closure)
            if on_checkpoint is not None and c.steps in wanted:
                on_checkpoint(c.steps, model, lr)
            return model
        for step in range(1, c.steps + 1):
            opt.step(closure)
            if on_checkpoint is not None and step in wanted:
                on_checkpoint(step, model, lr)
        return model

    @property
    def trains_many(self) -> bool:
        """Full-batch GD trains many models at once; L-BFGS's line search differs per model."""
        return self.config.optimizer == "gd"

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """``train`` with ``task.optimizer=gd`` for M models at once: stacked weights, each model's own
        initialisation and subset (example weights 0/1 over the whole set), one vmapped gradient a step."""
        if not self.trains_many:
            raise ValueError("task.optimizer=lbfgs trains one model at a time; set task.optimizer=gd")
        data = self.train_data()
        return train_many_gd(self, masks, seeds, self.config.steps, self.config.lr,   # as ``objective``:
                             lambda model, p, w: (self.loss(model, data) * w).sum() / self.n_train + self.penalty(p))

    def unroll_unavailable(self) -> str:
        if self.config.optimizer != "gd":       # L-BFGS's line search is not a fixed chain of steps
            return "task.optimizer=lbfgs has no fixed chain of steps to unroll; set task.optimizer=gd"
        return ""

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> Unroll:
        """Full-batch GD as pure steps: every step sees all of ``indices``, each example weighted w_i/N."""
        if self.unroll_unavailable():
            raise ValueError(self.unroll_unavailable())
        n = self.n_train

        def objective(net, params, batch, w):   # (1/N)·Σ w_i ℓ_i + (l2/2)‖θ‖²
            return (self.loss(net, batch) * w).sum() / n + self.penalty(params)

        return Unroll(model, self.train_data(), [indices.cpu()] * self.config.steps, objective,
                      Optimizer("sgd", self.config.lr))
