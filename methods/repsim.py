"""repsim: representation similarity (gradient-free; a strong baseline on language tasks in DATE-LM):
score[i, j] = −cos(h(x_i), h(x_j)), h the input of the model's final linear layer (or of the module
named by ``repsim.module``).  Sign: a similar training example helps a loss measurement, so its score
is negative — the more similar, the more negative.

The representation is captured with a forward pre-hook while ``task.loss`` (training examples) or
``task.measurement`` (queries) runs in eval mode without gradients.  An input with more than two
dimensions (a language model's ``[B, T, h]``) is mean-pooled over every dimension but the first and
last, to ``[B, h]``.  On a linear model (``regression``) the representation is the raw input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tdabench.api.checks import choices_and_patterns, integer
from tdabench.api.config import ConfigError
from tdabench.toolkit.grads import ExampleFn
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Batch, Task, batches


@dataclass(frozen=True)
class RepSimConfig(MethodConfig):
    module: str = ""          # module (model.named_modules() name) whose input is h; "": the last nn.Linear
    normalize: bool = True    # cosine similarity; false: dot product
    batch_size: int = 256     # examples per forward pass

    def __post_init__(self) -> None:
        choices_and_patterns(self, "repsim")
        if not isinstance(self.module, str):
            raise ConfigError(f"repsim.module={self.module!r}: must be a module name (a string); set --set repsim.module=")
        integer(self, "repsim", "batch_size", "examples per forward pass", minimum=1)


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name`` in ``model`` ("" = the last ``nn.Linear``), or a ConfigError (a ValueError)
    that lists the names."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    if not name:
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        if linears:
            return linears[-1]
        why = "the model has no nn.Linear to default to"
    else:
        why = f"the model has no module {name!r}"
    listed = ", ".join(repr(n) for n in modules if n)
    raise ConfigError(f"repsim.module={name!r}: {why}; set --set repsim.module=NAME with one of: {listed}")


def representations(model: nn.Module, module: nn.Module, fn: ExampleFn, data: Batch, batch_size: int) -> Tensor:
    """The input of ``module`` while ``fn(model, batch)`` runs, mean-pooled to ``[n, h]``."""
    seen: list[Tensor] = []

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())

    handle = module.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for b in batches(data, batch_size):
                seen.clear()
                fn(model, b)
                if not seen:
                    raise ValueError("repsim.module: the chosen module is not called by the task's forward pass; "
                                     "name another with --set repsim.module=NAME")
                h = seen[-1]                                       # shape: [B, ..., h]; last call if several
                h = h.reshape(h.shape[0], -1, h.shape[-1]).mean(1) if h.dim() > 2 else h.reshape(h.shape[0], -1)
                out.append(h.double())                              # shape: [B, h]
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out)


@register_method
class RepSim(Method):
    name = "repsim"
    description = "representation similarity −cos(h_i, h_j) of the final linear layer's input (gradient-free)"
    Config = RepSimConfig
    tunable = {"normalize": ("true", "false")}   # --set repsim.normalize=auto (cosine or dot product)

    def check(self, task: Task) -> None:
        """A named module must exist (building one model is cheap next to the ground truth it saves)."""
        if self.config.module:
            find_module(task.make_model(0), self.config.module)

    def score(self, ctx: Context) -> Tensor:
        cfg = self.config
        module = find_module(ctx.model, cfg.module)
        h_train = representations(ctx.model, module, ctx.task.loss, ctx.train_data, cfg.batch_size)
        h_query = representations(ctx.model, module, ctx.task.measurement, ctx.query_data, cfg.batch_size)
        if cfg.normalize:
            h_train = torch.nn.functional.normalize(h_train, dim=1)
            h_query = torch.nn.functional.normalize(h_query, dim=1)
        return -(h_train @ h_query.T).float()  # shape: [n_train, n_query]
