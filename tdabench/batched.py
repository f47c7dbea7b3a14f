"""A toolkit for tasks that train many small models at once (``Task.train_many``).

M models are held as stacked parameters (a leading model dimension on every tensor); one step
updates every model on its own minibatch.  The pieces reproduce the one-model path exactly —
``minibatch_schedule`` draws each model's data order as ``training.minibatch_train`` does, and
``StackedAdam`` performs ``torch.optim.Adam``'s update, operation by operation — so a batched retrain
gives the one-model retrain's numbers to float tolerance.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import vmap

from .task import Batch, Task
from .unroll import stateless


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
    steps = torch.tensor([epochs * math.ceil(s.numel() / batch_size) for s in subsets])
    out = torch.full((len(subsets), int(steps.max()) * batch_size), -1, dtype=torch.long)
    for m, (subset, seed) in enumerate(zip(subsets, seeds)):
        gen = torch.Generator().manual_seed(int(seed))
        per_epoch = math.ceil(subset.numel() / batch_size) * batch_size     # an epoch's slots, padded
        orders = [subset[torch.randperm(subset.numel(), generator=gen)] for _ in range(epochs)]
        slots = out[m, : epochs * per_epoch].view(epochs, per_epoch)
        slots[:, : subset.numel()] = torch.stack(orders)
    out = out.view(len(subsets), -1, batch_size)
    return out, steps


class StackedAdam:
    """``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, as Adam does, not AdamW) over
    stacked parameters; every ``step`` updates every model (a model whose run has ended is frozen by
    its caller keeping a copy of its final weights, as ``train_many_adam`` does)."""

    def __init__(self, params: dict[str, Tensor], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.count = 0

    @torch.no_grad()
    def step(self) -> None:
        self.count += 1
        names = list(self.params)
        ps, gs = [self.params[n] for n in names], [self.params[n].grad.contiguous() for n in names]
        ms, vs = [self.exp_avg[n] for n in names], [self.exp_avg_sq[n] for n in names]
        fused = getattr(torch, "_fused_adam_", None)   # one kernel per tensor: ~10× fewer passes over memory
        try:
            if fused is None:
                raise NotImplementedError
            fused(ps, gs, ms, vs, [], [torch.tensor(float(self.count)) for _ in names], lr=self.lr,
                  beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.wd, eps=self.eps, amsgrad=False,
                  maximize=False)
        except (RuntimeError, NotImplementedError):
            self._plain(ps, gs, ms, vs)
        for p in ps:
            p.grad = None

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


def stacked_loss_grads(task: Task, template: nn.Module, params: dict[str, Tensor], batch: Batch, valid: Tensor) -> dict[str, Tensor]:
    """Per-model gradients of each model's mean training loss over its own minibatch.

    ``batch`` tensors are ``[M, B, ...]``, ``valid`` ``[M, B]`` (False = padding); the task's own
    ``loss`` runs on every model at once through ``torch.func.vmap``; the models are independent, so
    the gradient of the summed losses is each model's own gradient.  Returns ``{name: [M, *shape]}``.
    """
    def mean_loss(p: dict[str, Tensor], keep: Tensor, *rows: Tensor) -> Tensor:
        per_example = task.loss(stateless(template, p), rows)                  # shape: [B]
        return (per_example * keep).sum() / keep.sum().clamp(min=1)

    keep = valid.to(next(iter(params.values())).dtype)
    total = vmap(mean_loss)(params, keep, *batch).sum()
    return dict(zip(params, torch.autograd.grad(total, list(params.values()))))


@torch.no_grad()
def stacked_measure(task: Task, template: nn.Module, params: dict[str, Tensor], data: Batch, chunk: int = 1024) -> Tensor:
    """``task.measure`` of every stacked model on ``data``: ``[M, n]`` float32 (eval mode, no grad)."""
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
    order ``seeds[m]``; returns their query measurements ``[M, n_query]``."""
    models = [task.make_model(int(s)) for s in seeds]
    template = models[0].train()
    params = stack_models(models)
    opt = StackedAdam(params, lr=lr, weight_decay=weight_decay)
    schedule, steps = minibatch_schedule(masks, seeds, epochs, batch_size)     # shape: [M, S, B], [M]
    final = {n: p.detach().clone() for n, p in params.items()}                 # each model's weights at its last step
    data = task.train_data()
    for t in range(schedule.shape[1]):
        idx = schedule[:, t].to(data[0].device)                                  # shape: [M, B]
        flat = idx.clamp(min=0).flatten()
        batch = tuple(x.index_select(0, flat).view(*idx.shape, *x.shape[1:]) for x in data)   # shape: [M, B, ...]
        grads = stacked_loss_grads(task, template, params, batch, idx >= 0)
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()
        ended = (steps == t + 1).to(flat.device)                                 # runs that end at this step
        if ended.any():
            for name, p in params.items():
                final[name][ended] = p.detach()[ended]
    return stacked_measure(task, template, final, task.query_data()).cpu()
