"""Training as a chain of pure steps: s_{t+1} = h_t(s_t, β[batch_t]) (``Task.unroll``).

A state is ``{"params": {name: tensor}, "opt": {buffer: tensor}}``: the model's parameters and the
optimiser's buffers.  One step takes the per-example weights ``w`` of its minibatch (shape ``[B]``;
β = 1 is ordinary training, 0 drops the example while keeping the data order) and is written with
``torch.func`` so it can be differentiated (metagradients, ``tdabench.toolkit.metagrad``) and vectorised over
many weightings at once (retrains in the reference run's data order).  The updates follow
``torch.optim``'s SGD, Adam and AdamW operation by operation, so chaining the steps with β = 1
reproduces the task's ordinary ``train`` to float rounding (each task tests it).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tdabench.api.task import Batch, take

State = dict[str, dict[str, Tensor]]
#: ``objective(model, params, batch, w)``: the scalar a step descends; ``model`` is a callable running
#: the network with ``params``, ``w`` the batch's example weights ``[B]``.
Objective = Callable[[Callable[..., Tensor], dict[str, Tensor], Batch, Tensor], Tensor]


def stateless(template: nn.Module, params: dict[str, Tensor]) -> Callable[..., Tensor]:
    """A callable that runs ``template``'s forward with ``params`` (what a task's ``loss`` calls as its model)."""
    return lambda *args, **kwargs: functional_call(template, params, args, kwargs)


def _safe_sqrt(v: Tensor) -> Tensor:
    """√v with a finite derivative where v = 0 (a parameter that never got a gradient): v is floored at
    the smallest normal float, whose root (≤ 1.5e-19) vanishes next to Adam's ε in the same sum."""
    return v.clamp_min(torch.finfo(v.dtype).tiny).sqrt()


@dataclass(frozen=True)
class Optimizer:
    """A differentiable ``torch.optim`` update: ``sgd`` (momentum, L2), ``adam`` (L2 added to the gradient)
    or ``adamw`` (decoupled decay).  ``schedule(t)`` multiplies ``lr`` at update t (0-based), as LambdaLR."""

    kind: Literal["sgd", "adam", "adamw"]
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Optional[Callable[[int], float]] = field(default=None, compare=False)

    def lr_at(self, t: int) -> float:
        return self.lr * (self.schedule(t) if self.schedule is not None else 1.0)

    def init(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The optimiser's buffers before the first update (zeros)."""
        names = ("m", "v") if self.kind != "sgd" else ("m",) if self.momentum else ()
        return {f"{b}.{n}": torch.zeros_like(p) for b in names for n, p in params.items()}

    def update(self, params: dict[str, Tensor], buffers: dict[str, Tensor], grads: dict[str, Tensor],
               t: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Parameters and buffers after update t (pure: nothing is modified in place)."""
        lr, wd, new_p, new_b = self.lr_at(t), self.weight_decay, {}, {}
        for n, p in params.items():
            g = grads[n]
            if self.kind == "sgd":
                g = g + wd * p if wd else g
                if self.momentum:
                    g = new_b[f"m.{n}"] = self.momentum * buffers[f"m.{n}"] + g
                new_p[n] = p - lr * g
                continue
            if self.kind == "adamw":
                p = p * (1 - lr * wd)
            elif wd:
                g = g + wd * p
            b1, b2 = self.betas
            m = new_b[f"m.{n}"] = buffers[f"m.{n}"] + (g - buffers[f"m.{n}"]) * (1 - b1)   # torch's lerp
            v = new_b[f"v.{n}"] = b2 * buffers[f"v.{n}"] + (1 - b2) * g * g
            denom = _safe_sqrt(v) / (1 - b2 ** (t + 1)) ** 0.5 + self.eps
            new_p[n] = p - (lr / (1 - b1 ** (t + 1))) * m / denom
        return new_p, new_b


class Unroll:
    """One training run as T pure steps: initial model, data order (``schedule[t]``: the attribution
    indices of step t's minibatch), objective and optimiser.  Built by ``Task.unroll``."""

    def __init__(self, model: nn.Module, data: Batch, schedule: list[Tensor], objective: Objective,
                 optimizer: Optimizer) -> None:
        self.template = copy.deepcopy(model).train()
        self.data, self.schedule, self.objective, self.optimizer = data, schedule, objective, optimizer
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}

    @property
    def steps(self) -> int:
        return len(self.schedule)

    def initial(self) -> State:
        return {"params": dict(self.start), "opt": self.optimizer.init(self.start)}

    def batch(self, t: int) -> tuple[Tensor, Batch]:
        """Step t's attribution indices ``[B]`` and rows."""
        idx = self.schedule[t].to(self.data[0].device)
        return idx, take(self.data, idx)

    def step(self, state: State, t: int, w: Tensor) -> State:
        """s_{t+1} = h_t(s_t, w); ``w`` ``[B]``: the weights of step t's examples."""
        params, opt = self.optimizer.update(state["params"], state["opt"], self.gradient(state["params"], t, w), t)
        return {"params": params, "opt": opt}

    def gradient(self, params: dict[str, Tensor], t: int, w: Tensor) -> dict[str, Tensor]:
        """g(θ, w): the gradient step t's update takes, of the objective on step t's rows weighted by ``w``
        (what REPLAY's closed-form adjoint differentiates, ``toolkit/adjoints.py``)."""
        _, rows = self.batch(t)
        return grad(lambda p: self.objective(stateless(self.template, p), p, rows, w))(params)

    def weights(self, beta: Tensor, t: int) -> Tensor:
        """Step t's slice of β (``[n_train]`` or ``[M, n_train]``), in the parameters' dtype."""
        dtype = next(iter(self.start.values())).dtype
        return beta[..., self.schedule[t].to(beta.device)].to(dtype)

    @torch.no_grad()
    def run(self, beta: Optional[Tensor] = None, state: Optional[State] = None, start: int = 0,
            stop: Optional[int] = None) -> State:
        """Steps ``start``..``stop``−1 from ``state`` (default: the whole run from the start) with example
        weights β ``[n_train]`` (default: every weight 1)."""
        state = state if state is not None else self.initial()
        beta = beta if beta is not None else self.ones()
        for t in range(start, self.steps if stop is None else stop):
            state = self.step(state, t, self.weights(beta, t))
        return state

    def ones(self) -> Tensor:
        """β = 1 for every attribution example, ``[n_train]`` on the data's device."""
        return torch.ones(self.data[0].shape[0], device=self.data[0].device)

    @torch.no_grad()
    def run_many(self, beta: Tensor) -> dict[str, Tensor]:
        """The final parameters of M runs at once, run m with weights ``beta[m]`` (``[M, n_train]``), all
        in this run's data order: ``{name: [M, *shape]}``."""
        one = self.initial()
        state = {k: {n: v.expand(beta.shape[0], *v.shape).clone() for n, v in part.items()} for k, part in one.items()}
        beta = beta.to(self.data[0].device)
        for t in range(self.steps):
            state = vmap(lambda s, w: self.step(s, t, w))(state, self.weights(beta, t))   # noqa: B023 (called at once)
        return state["params"]

    def model(self, state: State) -> nn.Module:
        """A copy of the model holding ``state``'s parameters (eval mode)."""
        out = copy.deepcopy(self.template)
        with torch.no_grad():
            for n, p in out.named_parameters():
                p.copy_(state["params"][n])
        return out.eval()


def weighted_mean(loss: Callable[[Callable[..., Tensor], Batch], Tensor]) -> Objective:
    """The usual minibatch objective with example weights: Σ_b w_b·ℓ_b / B (β = 1: the batch mean)."""
    return lambda model, params, batch, w: (loss(model, batch) * w).sum() / w.shape[0]
