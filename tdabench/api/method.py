"""The Method interface and the Context the runner hands to every method.

Score sign convention (every method, every task): ``scores[i, j]`` predicts the change in query
``j``'s measurement when attribution example ``i`` is included in training (weight 0 → 1).  For a
loss measurement an example that helps the query has a *negative* score.  Library outputs are
converted to this sign inside the method file.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from tdabench.api.task import Batch, Checkpoint, Task


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config (subclass it as a frozen dataclass)."""


@dataclass
class Context:
    """Everything a method may use; filled by the runner, read-only for methods.

    ``model`` is the reference model trained on the full attribution set (eval mode, on
    ``device``).  ``checkpoints`` holds ``Method.needs_checkpoints`` points of its training
    trajectory (empty for endpoint methods).  ``cache_dir`` is private to this method and task
    and survives between runs (for expensive query-independent state such as curvature factors).
    """

    task: Task
    model: nn.Module
    train_data: Batch          # shape: [n_train, ...]
    query_data: Batch          # shape: [n_query, ...]
    device: torch.device
    seed: int
    cache_dir: Path
    checkpoints: list[Checkpoint] = field(default_factory=list)
    model_key: str = ""        # content hash of the reference model (task, config, seed)
    train_seed: int = 0        # the seed the reference model was initialised and trained with

    @property
    def n_train(self) -> int:
        return int(self.train_data[0].shape[0])

    @property
    def n_query(self) -> int:
        return int(self.query_data[0].shape[0])


class Method(ABC):
    """A training-data-attribution method.

    Subclasses set ``name``, ``description`` and ``Config`` and implement ``score``; ``fit`` is
    the optional query-independent stage (timed separately).  Capabilities are class attributes
    so that the core never branches on a method's name.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    #: False for baselines whose scores carry no information (exempt from the sign contract).
    informative: ClassVar[bool] = True
    #: Importable modules the method needs beyond the core (e.g. ``("kronfluence",)``).
    requires: ClassVar[tuple[str, ...]] = ()
    #: The command that installs ``requires``.
    install_hint: ClassVar[str] = "pip install 'tdabench[all]'"
    #: Settings ``--set NAME.KEY=auto`` may choose on the tuning half of the run's own ground truth
    #: (``tdabench.engine.tuning``): key → its grid of at most 9 values, as they would be typed after ``=``.
    tunable: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """The modules of ``requires`` that cannot be imported here."""
        import importlib.util

        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        #: The ``tunable`` key set to ``auto`` for this run (None: none); the pipeline tunes it.
        self.auto: Optional[str] = None
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__qualname__}, got {type(config).__name__}")

    @property
    def needs_checkpoints(self) -> int:
        """Trajectory checkpoints the method needs (0 for endpoint methods, which never pay for them)."""
        return 0

    @property
    def checkpoint_spacing(self) -> str:
        """``"even"`` (default) or ``"log"`` (denser early in training) spacing of the checkpoints."""
        return "even"

    def check_checkpoints(self, ctx: Context) -> None:
        """Fail unless ``ctx`` holds exactly the ``needs_checkpoints`` checkpoints this method asked for."""
        if len(ctx.checkpoints) != self.needs_checkpoints:
            raise ValueError(f"{self.name} needs {self.needs_checkpoints} checkpoints, "
                             f"the context holds {len(ctx.checkpoints)}")

    def check(self, task: Task) -> None:
        """Checks of this configuration that need the task (run before any training); default none.
        Checks of the configuration alone belong in the Config's ``__post_init__``."""

    def fit(self, ctx: Context) -> None:
        """Query-independent work (factors, features, samples); default: nothing."""

    def extras(self) -> dict[str, Any]:
        """Diagnostics of the last ``score`` call to keep in the run record (JSON-ready); default none."""
        return {}

    def score(self, ctx: Context) -> Tensor:
        """Attribution scores, shape ``[n_train, n_query]``, float32, in the sign convention above."""
        raise NotImplementedError(f"{type(self).__name__} must implement score()")
