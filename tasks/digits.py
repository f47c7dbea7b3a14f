"""digits: scikit-learn's bundled 8×8 handwritten digits, a small MLP — the CPU quickstart task."""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.api.checks import fail, integer, number
from tdabench.api.registry import register_task
from tdabench.toolkit.stacked_mlp import train_many_mlp_adam
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig
from tdabench.toolkit.training import epoch_batches, minibatch_train, steps_per_run
from tdabench.api.unroll import Optimizer, Unroll, weighted_mean


@dataclass(frozen=True)
class DigitsConfig(TaskConfig):
    n_train: int = 1000        # attribution set size (of 1,797 images)
    n_query: int = 200         # query set size, disjoint from the attribution set
    hidden: int = 32           # MLP width: 64 → hidden → 10
    epochs: int = 20           # passes over the training subset
    batch_size: int = 64       # examples per Adam step
    lr: float = 0.01           # Adam
    weight_decay: float = 1e-4 # Adam's L2 penalty
    data_seed: int = 0         # fixes the split, not the training randomness

    def __post_init__(self) -> None:
        integer(self, "task", "n_train", "attribution set size", minimum=2)
        integer(self, "task", "n_query", "query set size", minimum=1)
        if self.n_train + self.n_query > 1797:
            fail("task", "n_train", self.n_train, f"at most {1797 - self.n_query} with task.n_query={self.n_query}",
                 "the data set has 1,797 images", 1797 - self.n_query)
        integer(self, "task", "hidden", "MLP width", minimum=1)
        integer(self, "task", "epochs", "passes over the training subset", minimum=1)
        integer(self, "task", "batch_size", "examples per Adam step", minimum=1)
        number(self, "task", "lr", "Adam's learning rate", above=0)
        number(self, "task", "weight_decay", "Adam's L2 penalty", at_least=0)
        integer(self, "task", "data_seed", "the split's seed")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, ``x`` ``[1797, 64]`` (pixel counts 0–16) and ``y`` ``[1797]``, read
    from the file its ``load_digits`` reads, without importing scikit-learn: that import (which
    brings in scipy.stats) took 2 s, a fifth of a 1,000-subset ground truth's wall-clock."""
    spec = importlib.util.find_spec("sklearn")
    where = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if where is None or not where.exists():   # another layout of the package: its own loader
        from sklearn.datasets import load_digits as sklearn_digits
        return sklearn_digits(return_X_y=True)
    with gzip.open(where, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")                                   # shape: [1797, 65], label last
    return data[:, :-1], data[:, -1].astype(int)


@register_task
class Digits(Task):
    name = "digits"
    version = "1"
    description = "sklearn 8x8 digits (real data, ships with scikit-learn), 64-32-10 MLP, Adam"
    Config = DigitsConfig

    @cached_property
    def _split(self) -> tuple[Batch, Batch]:
        c = self.config
        x, y = load_digits()
        if c.n_train + c.n_query > len(y):
            raise ValueError(f"task.n_train + task.n_query = {c.n_train + c.n_query} exceeds the {len(y)} digits")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(c.data_seed))
        x = torch.tensor(x, dtype=torch.float32, device=self.device) / 16.0   # shape: [1797, 64]
        y = torch.tensor(y, dtype=torch.long, device=self.device)             # shape: [1797]
        tr, qu = perm[: c.n_train].to(self.device), perm[c.n_train : c.n_train + c.n_query].to(self.device)
        return (x[tr], y[tr]), (x[qu], y[qu])

    def train_data(self) -> Batch:
        return self._split[0]

    def query_data(self) -> Batch:
        return self._split[1]

    def kernel_labels(self) -> dict[str, Tensor]:
        """The digit classes of the attribution set (``tdabench kernel``)."""
        return {"digit": self.train_data()[1].cpu()}

    def make_model(self, seed: int) -> nn.Module:
        # The layers are initialised on the CPU, by its generator: torch.manual_seed would seed every
        # accelerator's as well, which takes as long as building the model.
        torch.default_generator.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, self.config.hidden), nn.ReLU(), nn.Linear(self.config.hidden, 10)).to(self.device)

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch[0])  # shape: [B, 10] logits

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs, batch[1], reduction="none")  # shape: [B]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)

    def total_steps(self, n_examples: int) -> int:
        return steps_per_run(n_examples, self.config.epochs, self.config.batch_size)

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """The ``train`` recipe for M models at once (stacked weights, one vectorised Adam, the MLP's
        cross-entropy differentiated by hand): ``[M, n_query]``."""
        c = self.config
        return train_many_mlp_adam(self, masks, seeds, c.epochs, c.batch_size, c.lr, c.weight_decay)

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        c = self.config
        opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        return minibatch_train(model, self.train_data(), indices, lambda m, b: self.loss(m, b).mean(), opt,
                               c.epochs, c.batch_size, seed, on_checkpoint, checkpoint_steps)

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> Unroll:
        """``train`` as pure steps: the same seeded minibatches, batch-mean loss, Adam with L2."""
        c = self.config
        return Unroll(model, self.train_data(), epoch_batches(indices, seed, c.epochs, c.batch_size),
                      weighted_mean(self.loss), Optimizer("adam", c.lr, weight_decay=c.weight_decay))
