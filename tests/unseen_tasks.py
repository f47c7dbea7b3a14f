"""A family of small non-convex classifiers that no default was chosen on: two-hidden-layer MLPs (tanh
or ReLU, SGD with momentum or Adam) on scikit-learn's bundled tabular sets and on its generators.
They stand in for the task a user brings, plugged in as a user would (``TASKS.register``), so that
the methods' defaults are checked where nobody tuned them (issue 34; ``test_defaults_unseen.py`` and
``benchmarks/defaults_unseen.py``).  Nothing in ``tdabench`` imports this file."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.toolkit.batched import (
    StackedAdam, StackedSGD, in_groups, minibatch_schedule, stack_models, stacked_loss_grads, stacked_measure,
    train_stacked,
)
from tdabench.api.registry import TASKS
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig
from tdabench.toolkit.training import minibatch_train, steps_per_run

#: The family: (name, settings).  Datasets, widths, activations and optimisers all differ.
FAMILY: tuple[tuple[str, dict[str, object]], ...] = (
    ("cancer-tanh-sgd", dict(dataset="breast_cancer", activation="tanh", hidden=16, optimizer="sgd")),
    ("wine-relu-adam", dict(dataset="wine", activation="relu", hidden=12, optimizer="adam", n_train=120, n_query=50)),
    ("moons-tanh-adam", dict(dataset="moons", activation="tanh", hidden=24, optimizer="adam")),
    ("classif-relu-sgd", dict(dataset="classification", activation="relu", hidden=20, optimizer="sgd")),
)


@dataclass(frozen=True)
class UnseenConfig(TaskConfig):
    dataset: Literal["breast_cancer", "wine", "moons", "classification"] = "breast_cancer"
    activation: Literal["tanh", "relu"] = "tanh"
    hidden: int = 16            # both hidden layers: in → hidden → hidden → classes
    optimizer: Literal["sgd", "adam"] = "sgd"
    n_train: int = 240
    n_query: int = 60
    epochs: int = 30
    batch_size: int = 32
    weight_decay: float = 1e-3  # L2 in the optimiser's update
    data_seed: int = 0


def _load(cfg: UnseenConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    if cfg.dataset == "breast_cancer":
        return datasets.load_breast_cancer(return_X_y=True)
    if cfg.dataset == "wine":
        return datasets.load_wine(return_X_y=True)
    if cfg.dataset == "moons":
        return datasets.make_moons(n, noise=0.3, random_state=cfg.data_seed)
    return datasets.make_classification(n, n_features=20, n_informative=8, n_classes=3, random_state=cfg.data_seed)


class Unseen(Task):
    name = "unseen"
    version = "1"
    description = "a small non-convex MLP on a scikit-learn tabular set (the defaults' test family)"
    Config = UnseenConfig

    @cached_property
    def _split(self) -> tuple[Batch, Batch]:
        c = self.config
        x, y = _load(c, c.n_train + c.n_query)
        perm = np.random.default_rng(c.data_seed).permutation(len(y))[: c.n_train + c.n_query]
        x, y = x[perm], y[perm]
        mean, std = x[: c.n_train].mean(0), x[: c.n_train].std(0) + 1e-8     # the attribution set's statistics
        x = torch.tensor((x - mean) / std, dtype=torch.float32)                 # shape: [n_train + n_query, F]
        y = torch.tensor(y, dtype=torch.long)
        return (x[: c.n_train], y[: c.n_train]), (x[c.n_train :], y[c.n_train :])

    def train_data(self) -> Batch:
        return self._split[0]

    def query_data(self) -> Batch:
        return self._split[1]

    def make_model(self, seed: int) -> nn.Module:
        torch.default_generator.manual_seed(seed)
        c, (x, y) = self.config, self._split[0]
        act = nn.Tanh if c.activation == "tanh" else nn.ReLU
        classes = int(torch.cat([y, self._split[1][1]]).max()) + 1
        return nn.Sequential(nn.Linear(x.shape[1], c.hidden), act(), nn.Linear(c.hidden, c.hidden), act(),
                             nn.Linear(c.hidden, classes))

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch[0])                                                  # shape: [B, classes]

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs, batch[1], reduction="none")             # shape: [B]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)

    def total_steps(self, n_examples: int) -> int:
        return steps_per_run(n_examples, self.config.epochs, self.config.batch_size)

    def _optimizer(self) -> tuple[type, type, dict[str, float]]:
        """(torch's optimiser, its stacked twin from ``tdabench.toolkit.batched``, their shared settings)."""
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam, StackedAdam, dict(lr=0.01, weight_decay=c.weight_decay)
        return torch.optim.SGD, StackedSGD, dict(lr=0.05, momentum=0.9, weight_decay=c.weight_decay)

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        c = self.config
        one, _, kw = self._optimizer()
        return minibatch_train(model, self.train_data(), indices, lambda m, b: self.loss(m, b).mean(),
                               one(model.parameters(), **kw), c.epochs, c.batch_size, seed, on_checkpoint,
                               checkpoint_steps)

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        c = self.config
        _, many, kw = self._optimizer()

        def train(group_masks: Tensor, group_seeds: list[int]) -> Tensor:
            models = [self.make_model(s) for s in group_seeds]
            params = {n: p.detach() for n, p in stack_models(models).items()}
            schedule, steps = minibatch_schedule(group_masks, group_seeds, c.epochs, c.batch_size)
            final = train_stacked(params, many(params, **kw), schedule, steps, stacked_loss_grads(self, models[0]))
            return stacked_measure(self, models[0], final, self.query_data()).cpu()
        return in_groups(masks, seeds, c.epochs, c.batch_size, len(seeds), train)


@contextmanager
def registered() -> Iterator[type[Unseen]]:
    """``Unseen`` in the task registry for the duration (a user's plug-in), then removed again."""
    TASKS.names()                                    # load the built-ins first: registering must not pre-empt them
    TASKS.register(Unseen)
    try:
        yield Unseen
    finally:
        TASKS._classes.pop(Unseen.name, None)
