"""hierarchy: Saxe et al.'s hierarchical semantic data and a 2-layer deep linear network (002 App. C).

Items are the leaves of a tree with ``levels`` levels and ``branching`` children per node (4 levels of
a binary tree: 8 items — living things / animals vs plants / mammals, birds, trees, flowers / dog, cat,
…).  An item's input is its one-hot index; its output has one feature per tree node, 1 where the node
is the item or one of its ancestors.  The network y = W₂W₁x has no biases and a small Gaussian
initialisation, and full-batch gradient descent on the mean squared error learns the tree one level
at a time, coarsest first (002 Fig. 2c) — the stages stagewise attribution is about.

Every item carries the fixed weight 1/N in the objective (1/N)·Σ_{i∈S} ½‖W₂W₁x_i − y_i‖², so leaving
an item out is exactly 002 C.3's ablation (input and output masked to zero).  The queries are the
items themselves (the influence of dog on cat).  Training is deterministic and float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from tdabench.toolkit.batched import train_many_gd
from tdabench.api.checks import integer, number
from tdabench.toolkit.deeplinear import DeepLinear
from tdabench.api.registry import register_task
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig, take
from tdabench.api.unroll import Optimizer, Unroll


@dataclass(frozen=True)
class HierarchyConfig(TaskConfig):
    levels: int = 4            # tree levels, root included (4: root, 2, 4, 8 nodes)
    branching: int = 2         # children per node
    hidden: int = 50           # hidden units (overparameterised: the data have rank = number of items)
    init_std: float = 1e-3     # Gaussian initialisation scale (small: the stages are sharp)
    lr: float = 0.1            # full-batch GD step size
    steps: int = 600           # GD steps (every level is learned by ~500 at the defaults)

    def __post_init__(self) -> None:
        integer(self, "task", "levels", "tree levels including the root", minimum=2)
        integer(self, "task", "branching", "children per tree node", minimum=2)
        integer(self, "task", "hidden", "hidden units of the linear network", minimum=1)
        number(self, "task", "init_std", "the initial weights' standard deviation", above=0)
        number(self, "task", "lr", "the GD step size", above=0)
        integer(self, "task", "steps", "GD steps", minimum=1)


def tree_features(levels: int, branching: int) -> Tensor:
    """``[n_items, n_nodes]`` float64: item i has feature f when tree node f is i or an ancestor of i
    (nodes listed level by level, root first)."""
    n = branching ** (levels - 1)
    cols = [torch.arange(n) // branching ** (levels - 1 - level) == node
            for level in range(levels) for node in range(branching**level)]
    return torch.stack(cols, dim=1).double()


@register_task
class Hierarchy(Task):
    name = "hierarchy"
    version = "1"
    description = "Saxe et al.'s hierarchical semantic data, 2-layer deep linear network, full-batch GD (002 App. C)"
    Config = HierarchyConfig
    # BIF on 8 items: full batch; ε, nβ, γ from a 27-point grid (ε ∈ {3e-5, 1e-4, 3e-4}, nβ ∈ {30, 100, 300},
    # γ ∈ {300, 1000, 3000}) scored by the loss kernel's tree recovery on seeds 0–2 (ε·γ ≈ 0.1 is best;
    # ε·γ ≥ 0.9 diverges); 2,000 draws per chain: at 500 the top split is missed on 2 of 6 seeds.
    recommended = {"bif": {"epsilon": 1e-4, "nbeta": 100.0, "gamma": 1000.0, "batch_size": 8, "draws": 2000}}

    @cached_property
    def _data(self) -> Batch:
        c = self.config
        y = tree_features(c.levels, c.branching)                    # shape: [n_items, n_nodes]
        x = torch.eye(y.shape[0], dtype=torch.float64)              # shape: [n_items, n_items] one-hot
        return x.to(self.device), y.to(self.device)

    def train_data(self) -> Batch:
        return self._data

    def query_data(self) -> Batch:
        return self._data

    def labels(self, level: int) -> Tensor:
        """Each item's node at ``level`` (0: the root, ``levels − 1``: the item itself), ``[n_items]``."""
        c = self.config
        return torch.arange(self.n_train) // c.branching ** (c.levels - 1 - level)

    def kernel_labels(self) -> dict[str, Tensor]:
        """The tree's levels below the root and above the items, as labellings (``tdabench kernel``)."""
        return {f"level{level}": self.labels(level) for level in range(1, self.config.levels - 1)}

    def make_model(self, seed: int) -> nn.Module:
        c = self.config
        gen = torch.Generator().manual_seed(seed)
        n, f = self._data[0].shape[1], self._data[1].shape[1]
        model = nn.Sequential(nn.Linear(n, c.hidden, bias=False), nn.Linear(c.hidden, f, bias=False)).double()
        with torch.no_grad():
            for layer in model:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) * c.init_std)
        return model.to(self.device)

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch[0])                                      # shape: [B, n_nodes]

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return 0.5 * ((outputs - batch[1]) ** 2).sum(1)             # shape: [B]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)

    def deep_linear(self) -> DeepLinear:
        """The closed form of this network's training (002 C.6; ``tdabench stagewise`` draws its influence
        next to the methods'): the items' targets, the step size, and the initial mode strength of a
        Gaussian initialisation, hidden·σ²/2 (the strength a mode's random start grows from)."""
        c = self.config
        return DeepLinear(self._data[1].cpu(), c.lr, c.hidden * c.init_std**2 / 2)

    def hidden(self, model: nn.Module) -> Tensor:
        """The hidden representation W₁x of every query item, ``[n_items, hidden]`` (for MDS over training)."""
        return model[0](self.query_data()[0]).detach()

    def total_steps(self, n_examples: int) -> int:
        return self.config.steps

    def objective(self, model: nn.Module, indices: Tensor) -> Tensor:
        """(1/N)·Σ_{i∈indices} ℓ_i with N the number of items (a left-out item is masked, not renormalised)."""
        return self.loss(model, take(self.train_data(), indices)).sum() / self.n_train

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        opt, wanted = torch.optim.SGD(model.parameters(), lr=self.config.lr), set(checkpoint_steps)
        if on_checkpoint is not None and 0 in wanted:
            on_checkpoint(0, model, self.config.lr)
        for step in range(1, self.config.steps + 1):
            opt.zero_grad(set_to_none=True)
            self.objective(model, indices).backward()
            opt.step()
            if on_checkpoint is not None and step in wanted:
                on_checkpoint(step, model, self.config.lr)
        return model

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """``train`` for M models at once: stacked weights, each model's own initialisation and items
        (example weights 0/1 over all of them), one vmapped gradient a step: ``[M, n_items]``."""
        data = self.train_data()
        return train_many_gd(self, masks, seeds, self.config.steps, self.config.lr,   # as ``objective``
                             lambda model, p, w: (self.loss(model, data) * w).sum() / self.n_train)

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> Unroll:
        """Full-batch GD as pure steps, each item weighted w_i/N."""
        n = self.n_train
        return Unroll(model, self.train_data(), [indices.cpu()] * self.config.steps,
                      lambda net, params, batch, w: (self.loss(net, batch) * w).sum() / n, Optimizer("sgd", self.config.lr))
