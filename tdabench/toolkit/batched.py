"""A toolkit for tasks that train many small models at once (``Task.train_many``).

M models are held as stacked parameters (a leading model dimension on every tensor); one step
updates every model on its own minibatch.  The pieces reproduce the one-model path exactly —
``minibatch_schedule`` draws each model's data order as ``training.minibatch_train`` does, and
``StackedAdam`` performs ``torch.optim.Adam``'s update, operation by operation — so a batched retrain
gives the one-model retrain's numbers to float tolerance.  ``in_groups`` and ``train_stacked`` are the
driver every such trainer shares: a task supplies only its gradients (``stacked_loss_grads`` runs the
task's own loss under vmap; ``stacked_mlp`` writes an MLP's out by hand).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from tdabench.api.task import Batch, Task
from tdabench.toolkit.training import steps_per_run
from tdabench.api.unroll import stateless


def stack_models(models: Sequence[nn.Module]) -> dict[str, Tensor]:
    """The parameters of ``models`` (same architecture) stacked on a new leading dimension:
    ``{name: [M, *shape]}``, leaf tensors that require grad."""
    names = [n for n, _ in models[0].named_parameters()]
    params = [dict(m.named_parameters()) for m in models]
    return {n: torch.stack([p[n].detach() for p in params]).requires_grad_(True) for n in names}


def minibatch_schedule(masks: Tensor, seeds: Sequence[int], epochs: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """Every model's minibatches, as ``training.minibatch_train`` draws them: per model a CPU generator
    seeded with its seed, one ``randperm`` of its subset per epoch, consecutive batches of
    ``batch_size`` (the last one shorter).  Returns indices ``[M, S, batch_size]`` (−1 = padding) and the
    number of steps of each model ``[M]``; S is the largest."""
    subsets = [m.nonzero().squeeze(1).cpu() for m in masks]
    steps = torch.tensor([steps_per_run(s.numel(), epochs, batch_size) for s in subsets])
    out = torch.full((len(subsets), int(steps.max()) * batch_size), -1, dtype=torch.long)
    for m, (subset, seed) in enumerate(zip(subsets, seeds)):
        gen, n = torch.Generator().manual_seed(int(seed)), subset.numel()
        perms = torch.empty(epochs, n, dtype=torch.long)
        for e in range(epochs):                      # into one buffer, gathered once: a fifth less time
            torch.randperm(n, generator=gen, out=perms[e])
        per_epoch = math.ceil(n / batch_size) * batch_size                   # an epoch's slots, padded
        out[m, : epochs * per_epoch].view(epochs, per_epoch)[:, :n] = subset[perms]
    return out.view(len(subsets), -1, batch_size), steps


def mean_weights(schedule: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Each scheduled example's weight in its minibatch's mean loss: ``schedule`` ``[..., B]`` of indices
    (−1 = padding) → ``[..., B]``, 1/(real examples of the minibatch) for each real one, else 0."""
    keep = (schedule >= 0).to(dtype)
    return keep / keep.sum(-1, keepdim=True).clamp(min=1)


class StackedAdam:
    """``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, as Adam does, not AdamW) over
    stacked parameters; every ``step`` updates every model (a model whose run has ended is frozen by
    its caller keeping a copy of its final weights, as ``train_stacked`` does)."""

    def __init__(self, params: dict[str, Tensor], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.count = 0

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor]) -> None:
        """One update of every model with ``grads`` ``{name: [M, *shape]}``."""
        self.count += 1
        names = list(self.params)
        ps, gs = [self.params[n] for n in names], [grads[n].contiguous() for n in names]
        ms, vs = [self.exp_avg[n] for n in names], [self.exp_avg_sq[n] for n in names]
        fused = getattr(torch, "_fused_adam_", None)   # one kernel per tensor: ~10× fewer passes over memory
        try:
            if fused is None:
                raise NotImplementedError
            # the step count on each parameter's device, in float32, as torch.optim.Adam(fused=True) keeps it
            # (CPU step tensors make the CUDA kernel raise, which fell back to the slow path)
            steps = [torch.tensor(float(self.count), dtype=torch.float32, device=p.device) for p in ps]
            fused(ps, gs, ms, vs, [], steps, lr=self.lr,
                  beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.wd, eps=self.eps, amsgrad=False,
                  maximize=False)
        except (RuntimeError, NotImplementedError):
            self._plain(ps, gs, ms, vs)

    def _plain(self, ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor]) -> None:
        """Adam's single-tensor update, operation by operation (where the fused kernel is missing)."""
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1**self.count)
        bc2_sqrt = (1 - b2**self.count) ** 0.5
        for p, g, m, v in zip(ps, gs, ms, vs):
            if self.wd != 0:
                g = g.add(p, alpha=self.wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-step_size)


class StackedSGD:
    """``torch.optim.SGD`` (momentum without dampening or Nesterov, L2 ``weight_decay`` added to the
    gradient) over stacked parameters, operation by operation as torch's update."""

    def __init__(self, params: dict[str, Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.momentum, self.wd = params, lr, momentum, weight_decay
        self.buffers: dict[str, Tensor] = {}

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor]) -> None:
        """One update of every model with ``grads`` ``{name: [M, *shape]}``."""
        for name, p in self.params.items():
            g = grads[name]
            if self.wd != 0:
                g = g.add(p, alpha=self.wd)
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:           # torch's first step: the buffer is the gradient itself
                    buf = self.buffers[name] = g.clone()
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self.lr)


#: What ``train_stacked`` steps with: ``StackedAdam`` or ``StackedSGD``.
StackedOptimizer = Union[StackedAdam, StackedSGD]

#: A stacked model's gradients: ``(params {name: [M, *shape]}, rows [M, B] training-set indices,
#: weights [M, B] each row's weight in its model's loss) → {name: [M, *shape]}``.
GradFn = Callable[[dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]


def stacked_loss_grads(task: Task, template: nn.Module) -> GradFn:
    """Per-model gradients of each model's weighted training loss over its own minibatch: the task's
    own ``loss`` runs on every model at once through ``torch.func.vmap``; the models are independent,
    so the gradient of the summed losses is each model's own gradient."""
    data = task.train_data()

    def weighted_loss(p: dict[str, Tensor], weight: Tensor, *rows: Tensor) -> Tensor:
        return (task.loss(stateless(template, p), rows) * weight).sum()         # rows: one model's [B, ...]

    def grads(params: dict[str, Tensor], rows: Tensor, weights: Tensor) -> dict[str, Tensor]:
        flat = rows.flatten()
        batch = tuple(x.index_select(0, flat).view(*rows.shape, *x.shape[1:]) for x in data)   # shape: [M, B, ...]
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        with torch.enable_grad():
            total = vmap(weighted_loss)(leaves, weights, *batch).sum()
            return dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    return grads


@torch.no_grad()
def train_stacked(params: dict[str, Tensor], opt: StackedOptimizer, schedule: Tensor, steps: Tensor,
                  grads: GradFn) -> dict[str, Tensor]:
    """Step M stacked models through their ``minibatch_schedule`` (``[M, S, B]``, each model's ``steps``
    ``[M]``) with ``grads`` and ``opt``; returns each model's weights after its own last step."""
    first = next(iter(params.values()))
    device, final = first.device, {n: p.clone() for n, p in params.items()}
    weights = mean_weights(schedule, first.dtype).to(device)                    # shape: [M, S, B]
    rows = schedule.clamp(min=0).to(device)                                     # padding reads row 0, weighted 0
    ended = {n: (steps == n).nonzero().squeeze(1).to(device) for n in steps.unique().tolist()}
    for t in range(schedule.shape[1]):
        opt.step(grads(params, rows[:, t], weights[:, t]))
        if t + 1 in ended:                                                       # runs that end at this step
            for name, p in params.items():
                final[name][ended[t + 1]] = p[ended[t + 1]]
    return final


def in_groups(masks: Tensor, seeds: Sequence[int], epochs: int, batch_size: int, size: int,
              train: Callable[[Tensor, list[int]], Tensor]) -> Tensor:
    """``train(masks, seeds)`` → ``[m, ...]`` over groups of at most ``size`` models, equal in size, each
    of runs of as equal a length as the batch allows (a group steps until its longest run ends: half
    subsets of digits, 140, 160 or 180 steps, grouped as they came, idled 9% of their model-steps);
    returns the results in the order of ``masks``."""
    steps = torch.tensor([steps_per_run(int(n), epochs, batch_size) for n in masks.sum(1)])
    order = torch.argsort(steps, descending=True, stable=True)
    out: Tensor | None = None
    for group in torch.tensor_split(order, math.ceil(len(seeds) / size)):
        result = train(masks[group], [int(seeds[i]) for i in group])
        if out is None:
            out = result.new_empty(len(seeds), *result.shape[1:])
        out[group] = result
    return out


@torch.no_grad()
def stacked_measure(task: Task, template: nn.Module, params: dict[str, Tensor], data: Batch, chunk: int = 0) -> Tensor:
    """``task.measure`` of every stacked model on ``data``: ``[M, n]`` float32 (eval mode, no grad), in passes of
    ``chunk`` rows per model (default the task's ``measure_batch_size``, which bounds a pass's outputs: 5
    sequences of Pythia-14M's logits, where a fixed 1,024 would have asked for 400 GB)."""
    chunk = chunk or task.measure_batch_size
    template.eval()

    def one(p: dict[str, Tensor], *rows: Tensor) -> Tensor:
        out = task.measurement(stateless(template, p), rows)
        return out.reshape(rows[0].shape[0], -1).mean(1)

    n = data[0].shape[0]
    parts = [vmap(one, in_dims=(0,) + (None,) * len(data))(params, *(t[s : s + chunk] for t in data))
             for s in range(0, n, chunk)]
    return torch.cat(parts, dim=1).float()


def train_many_adam(task: Task, masks: Tensor, seeds: Sequence[int], epochs: int, batch_size: int, lr: float,
                    weight_decay: float) -> Tensor:
    """M models trained as ``training.minibatch_train`` with ``torch.optim.Adam`` trains one, model m
    from ``task.make_model(seeds[m])`` on the examples of ``masks[m]`` (shape ``[M, n_train]``) with data
    order ``seeds[m]``; returns their query measurements ``[M, n_query]``.  All at once, in order of
    length (``in_groups``)."""
    def train(group_masks: Tensor, group_seeds: list[int]) -> Tensor:
        models = [task.make_model(s) for s in group_seeds]
        template = models[0].train()
        params = {n: p.detach() for n, p in stack_models(models).items()}
        schedule, steps = minibatch_schedule(group_masks, group_seeds, epochs, batch_size)   # shape: [M, S, B], [M]
        opt = StackedAdam(params, lr=lr, weight_decay=weight_decay)
        final = train_stacked(params, opt, schedule, steps, stacked_loss_grads(task, template))
        return stacked_measure(task, template, final, task.query_data()).cpu()
    return in_groups(masks, seeds, epochs, batch_size, len(seeds), train)


def train_many_gd(task: Task, masks: Tensor, seeds: Sequence[int], steps: int, lr: float,
                  objective: Callable[[Callable[..., Tensor], dict[str, Tensor], Tensor], Tensor]) -> Tensor:
    """M models trained by full-batch gradient descent, model m from ``task.make_model(seeds[m])``
    minimising ``objective(model, params, weights)`` with ``weights`` = ``masks[m]`` as 0/1 example weights
    over the whole training set (``model`` runs the forward with ``params``: what the task's ``loss``
    calls); returns the query measurements ``[M, n_query]``.  One vmapped gradient a step."""
    models = [task.make_model(int(s)) for s in seeds]
    template = models[0]
    params = {n: p.detach() for n, p in stack_models(models).items()}
    weights = masks.to(task.device, next(iter(params.values())).dtype)           # shape: [M, n_train]
    step = vmap(grad(lambda p, w: objective(stateless(template, p), p, w)))
    for _ in range(steps):
        grads = step(params, weights)
        params = {n: p - lr * grads[n] for n, p in params.items()}
    return stacked_measure(task, template, params, task.query_data()).cpu()
