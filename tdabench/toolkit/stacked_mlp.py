"""Many small MLP classifiers trained at once, with hand-written forward and backward passes.

``batched.train_many_adam`` runs any task's own loss under ``torch.func.vmap`` and autograd; for the
commonest small model of the field — ``nn.Sequential`` of ``Linear`` layers with ``ReLU`` between,
trained on the mean cross-entropy — this module writes the two passes out as batched matrix
products, which is about twice as fast on one CPU core: no autograd graph, no per-op vmap dispatch,
and every product in the orientation the BLAS runs fastest.  A task opts in explicitly (its loss
must be that cross-entropy); the data order and the optimiser (Adam or SGD) are ``batched``'s, so a
model trained here equals the one-model retrain to float tolerance (tested) and is measured by the
task's own ``measure``.  Dropout is ``SeededDropout``: each model draws its masks from a generator of its
own seed, in the same calls in both paths, so a batched model sees the one-model run's masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from tdabench.toolkit.batched import (
    GradFn, StackedAdam, StackedOptimizer, in_groups, minibatch_schedule, stack_models, train_stacked,
)
from tdabench.api.task import Task


def dropout_generator(seed: int) -> torch.Generator:
    """The CPU generator a model trained with ``seed`` draws its dropout masks from (not the data order's)."""
    return torch.Generator().manual_seed(0x5EED_0000 + int(seed))


class SeededDropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks from ``generator`` (set by the task's ``train``; the global generator
    when none is set), by the call ``draw_mask`` that the batched path makes with the same generator."""

    generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return x * draw_mask(x.shape, self.p, self.generator).to(x.device)


def draw_mask(shape: Sequence[int] | torch.Size, p: float, generator: torch.Generator | None) -> Tensor:
    """A dropout mask of ``shape``, scaled by 1/(1 − p) as ``nn.Dropout`` scales its kept units (CPU)."""
    return torch.empty(tuple(shape)).bernoulli_(1 - p, generator=generator).div_(1 - p)


def seed_dropout(model: nn.Module, seed: int) -> None:
    """Give every ``SeededDropout`` of ``model`` one shared generator of ``seed``: the masks of a run."""
    generator = dropout_generator(seed)
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.generator = generator


@dataclass(frozen=True)
class Layer:
    """One ``Linear`` of the MLP: its parameter names, whether a ReLU follows it, and the dropout
    probability after that (0: none)."""

    weight: str
    bias: str | None
    relu: bool
    dropout: float = 0.0


def mlp_layers(model: nn.Module) -> list[Layer]:
    """The ``Linear`` layers of ``model``, which must be an ``nn.Sequential`` of ``Linear`` and ``ReLU``
    modules (each ReLU may be followed by a ``SeededDropout``) ending in a ``Linear`` (the logits); raises
    ``TypeError`` naming the first other module."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"stacked_mlp trains an nn.Sequential of Linear and ReLU layers, not {type(model).__name__}")
    layers: list[Layer] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            layers.append(Layer(f"{name}.weight", f"{name}.bias" if module.bias is not None else None, False))
        elif isinstance(module, nn.ReLU) and layers and not layers[-1].relu:
            layers[-1] = Layer(layers[-1].weight, layers[-1].bias, True)
        elif isinstance(module, SeededDropout) and layers and layers[-1].relu and not layers[-1].dropout:
            layers[-1] = Layer(layers[-1].weight, layers[-1].bias, True, module.p)
        else:
            raise TypeError(f"stacked_mlp: module {name!r} ({type(module).__name__}) is not a Linear, a ReLU after "
                            f"one, or a SeededDropout after a ReLU")
    if not layers or layers[-1].relu:
        raise TypeError("stacked_mlp: the model must end in a Linear layer (the logits)")
    return layers


def _forward(layers: list[Layer], params: dict[str, Tensor], x: Tensor,
             masks: Sequence[Tensor | None] = ()) -> tuple[list[Tensor], Tensor]:
    """Each layer's input ``[M, B, in]`` (ReLU and dropout applied: ``masks[i]`` ``[M, B, out]`` after layer
    i, scaled, or None) and the logits, transposed: ``[M, C, B]``.

    Hidden layers put examples in rows (``a @ Wᵀ``); the logits layer puts classes in rows (``W @ aᵀ``):
    a product whose output has 10 columns runs at a quarter of the rate of one with 64 on a CPU BLAS."""
    inputs, a = [], x
    for layer in layers[:-1]:
        inputs.append(a)
        w = params[layer.weight].transpose(1, 2)
        z = torch.baddbmm(params[layer.bias].unsqueeze(1), a, w) if layer.bias else torch.bmm(a, w)
        a = z.clamp_min_(0) if layer.relu else z
        if layer.dropout:
            a = a * masks[len(inputs) - 1]
    inputs.append(a)
    last = layers[-1]
    w, at = params[last.weight], a.transpose(1, 2)
    logits_t = torch.baddbmm(params[last.bias].unsqueeze(2), w, at) if last.bias else torch.bmm(w, at)
    return inputs, logits_t


def cross_entropy_grads(layers: list[Layer], params: dict[str, Tensor], x: Tensor, y: Tensor,
                        weight: Tensor, masks: Sequence[Tensor | None] = ()) -> dict[str, Tensor]:
    """Per-model gradients of each model's weighted cross-entropy ``(ce * weight).sum()``.

    ``x`` ``[M, B, in]``, ``y`` ``[M, B]`` class indices, ``weight`` ``[M, B]`` each example's weight in its
    model's loss (``batched.mean_weights``: 1/kept for a real example, 0 for padding, a minibatch's mean).
    ``masks``: the dropout masks after each hidden layer (``_forward``).  Returns ``{name: [M, *shape]}``,
    what autograd gives for every model."""
    inputs, logits_t = _forward(layers, params, x, masks)
    d = torch.softmax(logits_t, dim=1)                                           # shape: [M, C, B]
    d.scatter_add_(1, y.unsqueeze(1), torch.full_like(d[:, :1], -1.0))          # softmax − one-hot
    d *= weight.unsqueeze(1)
    grads: dict[str, Tensor] = {}
    last = layers[-1]
    grads[last.weight] = torch.bmm(d, inputs[-1])                                # shape: [M, C, in]
    if last.bias:
        grads[last.bias] = d.sum(2)
    d = torch.bmm(d.transpose(1, 2), params[last.weight])                        # shape: [M, B, in]
    for i in range(len(layers) - 2, -1, -1):
        layer = layers[i]
        if layer.dropout:   # through the mask; a dropped unit's input is 0, so the ReLU below passes none of it
            d = d * masks[i]
        if layer.relu:   # ReLU'(z), as autograd applies it: its output is positive exactly where z is
            d = torch.ops.aten.threshold_backward(d, inputs[i + 1], 0)   # (d * (a > 0) is 25× slower on a CPU)
        grads[layer.weight] = torch.bmm(d.transpose(1, 2), inputs[i])            # shape: [M, out, in]
        if layer.bias:
            grads[layer.bias] = d.sum(1)
        if i:
            d = torch.bmm(d, params[layer.weight])                               # shape: [M, B, in]
    return grads


#: Working set of one group of models trained step by step together (weights, gradients, Adam's
#: moments, the batch's activations): groups that stay in cache ran 1.35× faster than 256 digits
#: models at once on one core (64 models: 169 leave-one-out retrains/s; 256: 126/s; 16: 120/s, where
#: per-operator overhead takes over).
GROUP_BYTES = 8 * 2**20


def group_size(model: nn.Module, batch_size: int) -> int:
    """Models of ``model``'s shape to train together so that their working set fits ``GROUP_BYTES``:
    weights, gradient, Adam's two moments, the final copy and the update (6 copies of the parameters)
    and each layer's input, pre-activation and gradient for a batch (3 copies of the activations).
    Off the CPU, every model at once: a GPU wants the largest products it can get."""
    layers = mlp_layers(model)
    if next(model.parameters()).device.type != "cpu":
        return 2**62
    params = sum(p.numel() for p in model.parameters())
    widths = sum(model.get_parameter(layer.weight).shape[1] for layer in layers) + model.get_parameter(layers[-1].weight).shape[0]
    per_model = next(model.parameters()).element_size() * (6 * params + 3 * batch_size * widths)
    return max(1, GROUP_BYTES // per_model)


def train_many_mlp_adam(task: Task, masks: Tensor, seeds: Sequence[int], epochs: int, batch_size: int,
                        lr: float, weight_decay: float) -> Tensor:
    """``train_many_mlp`` with ``torch.optim.Adam`` (L2 ``weight_decay``): ``batched.train_many_adam`` for
    such an MLP."""
    return train_many_mlp(task, masks, seeds, epochs, batch_size,
                          lambda params: StackedAdam(params, lr=lr, weight_decay=weight_decay))


def train_many_mlp(task: Task, masks: Tensor, seeds: Sequence[int], epochs: int, batch_size: int,
                   optimizer: Callable[[dict[str, Tensor]], StackedOptimizer]) -> Tensor:
    """M models of a task whose model is such an MLP and whose training loss is the mean cross-entropy
    of its logits: model m from ``task.make_model(seeds[m])`` trained on ``masks[m]`` (``[M, n_train]``) in
    data order ``seeds[m]`` (dropout masks from ``dropout_generator(seeds[m])``) by ``optimizer(params)``;
    returns ``[M, n_query]``.  The models are trained in groups of at most ``group_size``
    (``batched.in_groups``; each model's result does not depend on its group, tested)."""
    size = group_size(task.make_model(int(seeds[0])), batch_size)

    @torch.no_grad()
    def train(group_masks: Tensor, group_seeds: list[int]) -> Tensor:
        models = [task.make_model(s) for s in group_seeds]
        params = {n: p.detach() for n, p in stack_models(models).items()}
        schedule, steps = minibatch_schedule(group_masks, group_seeds, epochs, batch_size)   # shape: [M, S, B], [M]
        grads = mlp_grads(task, mlp_layers(models[0]), group_seeds)
        final = train_stacked(params, optimizer(params), schedule, steps, grads)
        return torch.stack([task.measure(_load(model, final, m), task.query_data()).cpu() for m, model in enumerate(models)])
    return in_groups(masks, seeds, epochs, batch_size, size, train)


def mlp_grads(task: Task, layers: list[Layer], seeds: Sequence[int] = ()) -> GradFn:
    """``cross_entropy_grads`` on the task's training inputs and labels, as ``batched.train_stacked`` asks;
    with dropout, model m draws its masks from ``dropout_generator(seeds[m])``, step after step, for its
    real rows only (as its one-model run draws them, one layer after the other)."""
    x_all, y_all = task.train_data()[:2]
    generators = [dropout_generator(s) for s in seeds]
    dropped = [i for i, layer in enumerate(layers) if layer.dropout]
    if dropped and len(generators) == 0:
        raise ValueError("mlp_grads: a model with dropout needs the models' seeds (their dropout masks)")

    def grads(params: dict[str, Tensor], rows: Tensor, weights: Tensor) -> dict[str, Tensor]:
        flat = rows.flatten()
        x = x_all.index_select(0, flat).view(*rows.shape, -1)                   # shape: [M, B, in]
        masks = _dropout_masks(layers, params, dropped, generators, weights) if dropped else ()
        return cross_entropy_grads(layers, params, x, y_all.index_select(0, flat).view(rows.shape), weights, masks)
    return grads


def _dropout_masks(layers: list[Layer], params: dict[str, Tensor], dropped: list[int],
                   generators: list[torch.Generator], weights: Tensor) -> list[Tensor | None]:
    """This step's masks ``[M, B, out]`` after each dropout layer (None elsewhere); padding rows get 0."""
    real = (weights > 0).sum(1).tolist()                                         # each model's rows this step
    first = params[layers[0].weight]
    masks: list[Tensor | None] = [None] * len(layers)
    for i in dropped:
        masks[i] = torch.zeros(*weights.shape, params[layers[i].weight].shape[1], dtype=first.dtype)
    for m, rows in enumerate(real):
        for i in dropped:                          # one layer after the other, as the forward pass draws them
            if rows:
                masks[i][m, :rows] = draw_mask((rows, masks[i].shape[2]), layers[i].dropout, generators[m])
    return [mask.to(first.device) if mask is not None else None for mask in masks]


def _load(model: nn.Module, stacked: dict[str, Tensor], m: int) -> nn.Module:
    """``model`` with the weights of model ``m`` of ``stacked``: it is then measured by the task's own
    ``measure``, exactly as the one-model retrain is (a vmapped measurement would differ in rounding,
    and its cross-entropy decomposition imports half a second of torch's symbolic shapes)."""
    for name, p in model.named_parameters():
        p.copy_(stacked[name][m])
    return model
