"""mnist1d: Greydanus's MNIST-1D (2020), built procedurally by the ``mnist1d`` package, with its MLP or CNN.

The recipe is the package's own notebooks' (``notebooks/models.py`` and ``train.py``, 2020 defaults):

    model  layers                                                        params
    mlp    40-100-100-10, ReLU, the second layer residual (h + relu(W h))  15,210
    cnn    Conv1d 1→25 (k5 s2 p1), 25→25 (k3 s2 p1) ×2, ReLU, Linear 125→10  5,210

both trained by Adam (lr 0.01, no weight decay) on minibatches of 100 for 6,000 steps over the 4,000
training signals: 150 epochs, kept fixed here when a subset is trained (a half subset takes 3,000
steps).  The package's notebooks step through the data in a fixed order; tdabench reshuffles it each
epoch, seeded, as every task does.  Its README reports test accuracy ≈ 68 % (MLP) and 94 % (CNN).

Data: ``make_dataset(get_dataset_args())`` — 4,000 training and 1,000 test signals of length 40, built
from ten templates by the package's random transforms (seed 42): never the download path.  The queries
are the first ``n_query`` test signals.  Building takes about a second; the package seeds Python's and
NumPy's global generators while it builds, so their states are put back afterwards.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.toolkit.batched import train_many_adam
from tdabench.api.checks import fail, integer, number
from tdabench.api.registry import register_task
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig
from tdabench.toolkit.training import epoch_batches, minibatch_train, steps_per_run
from tdabench.api.unroll import Optimizer, Unroll, weighted_mean

N_TRAIN, N_TEST, LENGTH = 4000, 1000, 40     # the package's default split and signal length


@dataclass(frozen=True)
class Mnist1dConfig(TaskConfig):
    model: Literal["mlp", "cnn"] = "mlp"  # the notebooks' MLPBase or ConvBase
    n_train: int = N_TRAIN                # attribution set size (the first of the 4,000 training signals)
    n_query: int = N_TEST                 # query set size (the first of the 1,000 test signals)
    hidden: int = 100                     # MLP width (mlp only)
    channels: int = 25                    # CNN channels (cnn only)
    epochs: int = 150                     # 6,000 steps of 100 over 4,000 signals
    batch_size: int = 100                 # examples per Adam step
    lr: float = 0.01                      # Adam
    weight_decay: float = 0.0             # Adam's L2 penalty

    def __post_init__(self) -> None:
        integer(self, "task", "n_train", "attribution set size", minimum=2)
        integer(self, "task", "n_query", "query set size", minimum=1)
        if self.n_train > N_TRAIN:
            fail("task", "n_train", self.n_train, f"at most {N_TRAIN}", "MNIST-1D has 4,000 training signals", N_TRAIN)
        if self.n_query > N_TEST:
            fail("task", "n_query", self.n_query, f"at most {N_TEST}", "MNIST-1D has 1,000 test signals", N_TEST)
        integer(self, "task", "hidden", "MLP width", minimum=1)
        integer(self, "task", "channels", "CNN channels", minimum=1)
        integer(self, "task", "epochs", "passes over the training subset", minimum=1)
        integer(self, "task", "batch_size", "examples per Adam step", minimum=1)
        number(self, "task", "lr", "Adam's learning rate", above=0)
        number(self, "task", "weight_decay", "Adam's L2 penalty", at_least=0)


def build() -> dict[str, np.ndarray]:
    """The package's default MNIST-1D (``x`` ``[4000, 40]``, ``y``, ``x_test`` ``[1000, 40]``, ``y_test``), built
    procedurally; the global Python and NumPy generator states are restored around it."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("task mnist1d needs the mnist1d package: pip install mnist1d") from err
    states = random.getstate(), np.random.get_state()
    try:
        return make_dataset(get_dataset_args())
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


class ResidualMLP(nn.Module):
    """The notebooks' MLPBase: ``h = relu(W1 x); h = h + relu(W2 h); logits = W3 h``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear1, self.linear2, self.linear3 = nn.Linear(LENGTH, width), nn.Linear(width, width), nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:   # x shape: [B, 40]
        h = self.linear1(x).relu()
        return self.linear3(h + self.linear2(h).relu())  # shape: [B, 10]


class ConvNet(nn.Module):
    """The notebooks' ConvBase: three strided 1-D convolutions (lengths 40 → 19 → 10 → 5), a linear head.
    Each is a ``Conv2d`` over a signal one pixel high — the same function and parameters as the ``Conv1d``
    — because kronfluence's EK-FAC tracks ``Linear`` and ``Conv2d`` modules only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, (1, 5), stride=(1, 2), padding=(0, 1))
        self.conv2 = nn.Conv2d(channels, channels, (1, 3), stride=(1, 2), padding=(0, 1))
        self.conv3 = nn.Conv2d(channels, channels, (1, 3), stride=(1, 2), padding=(0, 1))
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x: Tensor) -> Tensor:   # x shape: [B, 40]
        h = self.conv1(x[..., None, None, :]).relu()    # shape: [B, C, 1, 19]
        h = self.conv3(self.conv2(h).relu()).relu()     # shape: [B, C, 1, 5]
        return self.linear(h.flatten(-3))               # shape: [B, 10]


@register_task
class Mnist1d(Task):
    name = "mnist1d"
    version = "1"
    description = "MNIST-1D (the mnist1d package, built procedurally), its MLP (task.model=mlp) or CNN (cnn), Adam"
    Config = Mnist1dConfig

    @cached_property
    def _raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        c, data = self.config, build()
        return data["x"][: c.n_train], data["y"][: c.n_train], data["x_test"][: c.n_query], data["y_test"][: c.n_query]

    @cached_property
    def _split(self) -> tuple[Batch, Batch]:
        xt, yt, xq, yq = self._raw
        as_batch = lambda x, y: (torch.tensor(x, dtype=torch.float32, device=self.device),  # noqa: E731
                                 torch.tensor(y, dtype=torch.long, device=self.device))
        return as_batch(xt, yt), as_batch(xq, yq)                              # shapes: [N, 40], [N]

    def train_data(self) -> Batch:
        return self._split[0]

    def query_data(self) -> Batch:
        return self._split[1]

    def describe(self) -> dict:
        """Name, version, config and the built data's hash (another package version builds other signals)."""
        digest = hashlib.sha256()
        for part in self._raw:
            digest.update(np.ascontiguousarray(part).tobytes())
        return {**super().describe(), "data": {"source": "mnist1d.make_dataset", "sha256": digest.hexdigest()[:16]}}

    def kernel_labels(self) -> dict[str, Tensor]:
        return {"digit": self.train_data()[1].cpu()}

    def make_model(self, seed: int) -> nn.Module:
        torch.default_generator.manual_seed(seed)          # initialised by the CPU generator (as digits)
        c = self.config
        return (ResidualMLP(c.hidden) if c.model == "mlp" else ConvNet(c.channels)).to(self.device)

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch[0])  # shape: [B, 10] logits

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs, batch[1], reduction="none")  # shape: [B]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)

    def total_steps(self, n_examples: int) -> int:
        return steps_per_run(n_examples, self.config.epochs, self.config.batch_size)

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        c = self.config
        opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        return minibatch_train(model, self.train_data(), indices, lambda m, b: self.loss(m, b).mean(), opt,
                               c.epochs, c.batch_size, seed, on_checkpoint, checkpoint_steps)

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """``train`` for M models at once (stacked weights, the task's loss under vmap, one Adam): ``[M, n_query]``."""
        c = self.config
        return train_many_adam(self, masks, seeds, c.epochs, c.batch_size, c.lr, c.weight_decay)

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> Unroll:
        """``train`` as pure steps: the same seeded minibatches, batch-mean loss, Adam."""
        c = self.config
        return Unroll(model, self.train_data(), epoch_batches(indices, seed, c.epochs, c.batch_size),
                      weighted_mean(self.loss), Optimizer("adam", c.lr, weight_decay=c.weight_decay))
