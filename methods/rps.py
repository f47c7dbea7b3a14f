"""rps: representer point selection (Yeh et al. 2018) through dattri's ``RPSAttributor`` — the final
linear layer is re-fitted with an L2 penalty λ to the model's own predictions, and by the representer
theorem each query's pre-activation decomposes as Σᵢ αᵢ·fᵢᵀf_query, fᵢ the representation feeding
that layer and αᵢ = −∂L/∂(pre-activation)/(2λn).  dattri returns αᵢ(class of query j)·fᵢᵀfⱼ, the
training example's push on the query's true-class logit (for one output, on the logit; it is turned
towards the query's label here by the factor 2y − 1).  A push towards the label lowers the query's loss,
so scores[i, j] = −that.  Defined for classifiers whose model maps the batch's first item to the logits
(checked on the data) with a final ``nn.Linear`` (the last one, or ``layer``); others are refused.
RPS explains predictions: for a query the model gets wrong, the examples that support its (wrong)
prediction score as harmful, whatever they do to its loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdabench.api.checks import choices_and_patterns, integer, number
from tdabench.toolkit.dattri_bridge import DattriMethod, class_labels, loader, session
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Task, take

from tdabench.methods.repsim import find_module


@dataclass(frozen=True)
class RPSConfig(MethodConfig):
    l2: float = 0.003          # λ of the re-fitted last layer
    epochs: int = 3000         # full-batch steps re-fitting it
    layer: str = ""            # the final Linear module's name ("": the last nn.Linear)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "rps")
        number(self, "rps", "l2", "λ of the re-fitted last layer", above=0)
        integer(self, "rps", "epochs", "full-batch steps re-fitting the last layer", minimum=1)


class _Exposed(nn.Module):
    """The model with its final Linear reachable as the attribute ``final`` (dattri looks it up by
    ``getattr``, so a nested layer such as ``head.2`` needs the alias); forward is the model's."""

    def __init__(self, model: nn.Module, final: nn.Module) -> None:
        super().__init__()
        self.model, self.final = model, final

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _target(logits: Tensor, probabilities: Tensor) -> Tensor:
    """The re-fit's loss on soft targets (the model's own predictions): cross-entropy, or BCE for one output."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, probabilities)
    return F.cross_entropy(logits, probabilities)


@register_method
class RPS(DattriMethod):
    name = "rps"
    description = "representer point selection: re-fitted last layer, representer theorem (dattri; classifiers)"
    Config = RPSConfig
    tunable = {"l2": ("0.0001", "0.001", "0.003", "0.01", "0.1", "1")}   # --set rps.l2=auto (the re-fitted layer's λ)
    influence_scale = False
    #: RPS explains the model's prediction (the last layer is re-fitted to the model's own outputs), not its
    #: loss: a training copy of a query the model gets wrong supports the wrong prediction and scores as harm.
    explains = "prediction"

    def check(self, task: Task) -> None:
        class_labels(task, task.train_data(), self.name)

    def _check_logits(self, ctx: Context) -> None:
        rows = take(ctx.train_data, torch.arange(min(4, ctx.n_train)))
        with torch.no_grad():
            direct, task_out = ctx.model(rows[0]), ctx.task.outputs(ctx.model, rows)
        if not isinstance(direct, Tensor) or direct.shape != task_out.shape or not torch.allclose(direct, task_out):
            raise ValueError(f"rps needs a model that maps the batch's first item to the task's outputs (logits); "
                             f"task {ctx.task.name}'s model does not")

    def attributor(self, ctx: Context) -> Any:
        from dattri.algorithm import RPSAttributor
        from dattri.task import AttributionTask

        self._check_logits(ctx)
        self._model = _Exposed(ctx.model, find_module(ctx.model, self.config.layer)).eval()
        task = AttributionTask(loss_func=_target, model=self._model, target_func=_target,
                               checkpoints={k: v.detach().clone() for k, v in self._model.state_dict().items()})
        return RPSAttributor(task=task, final_linear_layer_name="final", l2_strength=self.config.l2,
                             epoch=self.config.epochs, device=str(ctx.device))

    def fit_data(self, ctx: Context) -> Any:
        """Inputs with class labels: what the last layer's (query-independent) re-fit runs on."""
        self._train = loader((ctx.train_data[0], class_labels(ctx.task, ctx.train_data, self.name)), ctx.n_train)
        return self._train

    def score(self, ctx: Context) -> Tensor:
        self.fitted(ctx)
        y_query = class_labels(ctx.task, ctx.query_data, self.name)
        with session(self.dtype(ctx), ctx.seed):
            raw = self._attributor.attribute(self._train, loader((ctx.query_data[0], y_query), ctx.n_query))
        if self._model.final.out_features == 1:
            raw = raw * (2 * y_query.to(raw) - 1)          # towards the query's label, not up the logit
        # dattri divides the gradient of its (mean) loss by 2λn once more: ×n restores the theorem's αᵢ, so that
        # a query's column sums to its re-fitted logit (tested)
        return (-raw * ctx.n_train).float()               # shape: [n_train, n_query]
