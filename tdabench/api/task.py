"""The Task interface: data, model, training recipe and measurement of one benchmark setting."""
from __future__ import annotations

import dataclasses
from abc import ABC
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from tdabench.api.unroll import Unroll

#: A batch is a tuple of tensors that all share the leading (example) dimension ``B``.
Batch = tuple[Tensor, ...]


def take(data: Batch, index: Tensor | slice) -> Batch:
    """Rows ``index`` of every tensor of ``data`` (index may live on any device)."""
    if isinstance(index, Tensor):
        index = index.to(data[0].device)
    return tuple(t[index] for t in data)


def batches(data: Batch, batch_size: int) -> "list[Batch]":
    """``data`` cut into consecutive batches of at most ``batch_size`` rows, in order."""
    n = data[0].shape[0]
    return [tuple(t[i : i + batch_size] for t in data) for i in range(0, n, batch_size)]


@dataclass(frozen=True)
class Checkpoint:
    """One point on the reference model's training trajectory.

    ``lr`` is the learning rate in force at ``step``; ``steps_since_previous`` counts the optimiser
    steps since the previous checkpoint (or since the start for the first one).
    """

    step: int
    state: dict[str, Tensor]
    lr: float
    steps_since_previous: int


#: Called by ``Task.train`` as ``hook(step, model, lr)`` at each requested step (``lr``: the
#: learning rate in force for the updates that led to this step).
CheckpointHook = Callable[[int, nn.Module, float], None]


@dataclass(frozen=True)
class TaskConfig:
    """Base of every task config (subclass it as a frozen dataclass)."""


class Task(ABC):
    """A benchmark setting: attribution set, query set, model, training recipe, measurement.

    Subclasses set ``name``, ``version`` (bump on any change of data, model or recipe: it keys the
    ground-truth cache), ``description`` and ``Config`` (a frozen dataclass with defaults), and
    implement the methods below that raise ``NotImplementedError``.  Data are batches (tuples of
    tensors) kept on ``self.device``; an index into the attribution set is the unit of attribution.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type] = TaskConfig
    #: Per-method settings this task recommends (see ``recommendations``).
    recommended: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, config: Any = None, device: str | torch.device = "cpu") -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__qualname__}, got {type(config).__name__}")
        self.device = torch.device(device)

    # ----- required -------------------------------------------------------------------------
    def train_data(self) -> Batch:
        """The attribution set, every tensor of shape ``[n_train, ...]`` on ``self.device``."""
        raise NotImplementedError(f"{type(self).__name__} must implement train_data()")

    def query_data(self) -> Batch:
        """The query set, every tensor of shape ``[n_query, ...]`` on ``self.device``."""
        raise NotImplementedError(f"{type(self).__name__} must implement query_data()")

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model on ``self.device``, deterministic in ``seed``."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_model()")

    def train(self, model: nn.Module, indices: Tensor, seed: int,
              on_checkpoint: Optional[CheckpointHook] = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        """Train ``model`` in place on attribution examples ``indices`` (shape ``[m]``); return it.

        ``seed`` fixes data order and any other randomness. When ``on_checkpoint`` is given, call it
        at each step listed in ``checkpoint_steps`` (step 0 = before the first update).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement train()")

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Per-example training loss, shape ``[B]`` (no reduction, no regulariser)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    # ----- optional hooks -------------------------------------------------------------------
    def measurement(self, model: nn.Module, batch: Batch) -> Tensor:
        """The query observable φ, shape ``[B]``; by default the per-example loss."""
        return self.loss(model, batch)

    def token_measurement(self, model: nn.Module, batch: Batch) -> Tensor:
        """Per-token observable ``[B, T]`` whose mean over T is ``measurement`` (language tasks)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-token measurement")

    @property
    def has_token_measurement(self) -> bool:
        """True when ``token_measurement`` is implemented (methods may then attribute per token)."""
        return type(self).token_measurement is not Task.token_measurement

    def fit_data(self) -> Batch:
        """Data for query-independent fitting (curvature factors, SGLD minibatches): by default the
        attribution set; a task may return its full training set instead."""
        return self.train_data()

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """Model outputs ``[B, C]`` of which the loss is a function (needed for Gauss-Newton curvature)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose outputs(); Gauss-Newton curvature needs it")

    def output_loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Per-example loss ``[B]`` from ``outputs(model, batch)``; ``loss`` must equal their composition."""
        raise NotImplementedError(f"{type(self).__name__} does not expose output_loss(); Gauss-Newton curvature needs it")

    @property
    def has_outputs(self) -> bool:
        """True when ``outputs`` and ``output_loss`` are implemented (Gauss-Newton curvature needs both)."""
        return type(self).outputs is not Task.outputs and type(self).output_loss is not Task.output_loss

    def regularizer(self, model: nn.Module) -> Tensor:
        """The explicit regulariser of the training objective (scalar); 0 by default.

        The objective that ``train`` minimises is ``mean(loss) + regularizer``; curvature-based
        methods include this term in their Hessian.
        """
        return torch.zeros((), device=self.device)

    def total_steps(self, n_examples: int) -> int:
        """Optimiser steps of one training run on ``n_examples`` (for checkpoint spacing)."""
        raise NotImplementedError(f"{type(self).__name__} does not report its number of training steps")

    def train_many(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """Optional: train M fresh models at once — model m exactly as ``make_model(seeds[m])`` then
        ``train(model, masks[m].nonzero(), seeds[m])`` would — and return their query measurements
        ``[M, n_query]`` float32 on the CPU (``measure``'s values).  ``masks`` is ``[M, n_train]`` bool;
        subsets may differ in size.  Ground truth uses it when present (``tdabench.toolkit.batched`` helps)."""
        raise NotImplementedError(f"{type(self).__name__} does not train many models at once")

    @property
    def trains_many(self) -> bool:
        """True when ``train_many`` is implemented."""
        return type(self).train_many is not Task.train_many

    def unroll(self, model: nn.Module, indices: Tensor, seed: int) -> "Unroll":
        """Optional: the run ``train(model, indices, seed)`` as a chain of pure, differentiable steps
        (``tdabench.api.unroll``): the same data order, objective and optimiser, each step taking its
        minibatch's example weights β.  Chaining them with β = 1 must give ``train``'s trajectory.
        Metagradients (``magic``) and the reference-order ground truth (``gt.order=reference``) need it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement Task.unroll (its training as pure steps)")

    def unroll_unavailable(self) -> str:
        """Why ``unroll`` cannot run with this config, naming the setting to change ('' when it can).
        Override when availability depends on the config."""
        return "" if type(self).unroll is not Task.unroll else "it does not implement the Task.unroll hook"

    @property
    def unrolls(self) -> bool:
        """True when ``unroll`` is available with this config."""
        return not self.unroll_unavailable()

    def recommendations(self) -> dict[str, dict[str, Any]]:
        """Settings this task recommends per method, as data: ``{"bif": {"epsilon": 1e-5}, ...}``.

        The core applies them between a method's class defaults and the user's ``--set`` (and records
        which is which); suites take them from here too.  Default: the class attribute ``recommended``;
        override to derive them from the config (e.g. a projection when gradients would not fit).
        """
        return {method: dict(settings) for method, settings in self.recommended.items()}

    @property
    def num_gpus_per_retrain(self) -> float:
        """GPU fraction one retrain asks Ray for when CUDA is in use."""
        return float(getattr(self.config, "gpu_fraction", 1.0))

    # ----- derived --------------------------------------------------------------------------
    @property
    def n_train(self) -> int:
        return int(self.train_data()[0].shape[0])

    @property
    def n_query(self) -> int:
        return int(self.query_data()[0].shape[0])

    @property
    def measure_batch_size(self) -> int:
        """Rows per forward pass of ``measure`` (ground truth, trajectories, checks): bounds its memory.
        Override where one row's outputs are large (a language model's logits)."""
        return 1024

    def measure(self, model: nn.Module, data: Batch, batch_size: Optional[int] = None) -> Tensor:
        """φ of ``model`` on every row of ``data`` in eval mode without gradients, shape ``[n]``, in
        passes of ``batch_size`` rows (default ``measure_batch_size``)."""
        batch_size = batch_size or self.measure_batch_size
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = torch.cat([self.measurement(model, b).reshape(b[0].shape[0], -1).mean(1)
                             for b in batches(data, batch_size)])
        model.train(was_training)
        return out.float()

    def describe(self) -> dict[str, Any]:
        """Name, version and config: everything that identifies this task's numbers."""
        return {"name": self.name, "version": self.version, "config": dataclasses.asdict(self.config)}
