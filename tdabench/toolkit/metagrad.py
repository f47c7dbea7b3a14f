"""Exact metagradients of a training run by reverse-mode differentiation through every step (004 §4.2.2).

For an ``Unroll`` s_{t+1} = h_t(s_t, β) and query observables φ_j(s_T), the adjoint recursion

    λ_T = ∂φ/∂s_T,   ∂φ/∂β += λ_{t+1}·∂h_t/∂β,   λ_t = λ_{t+1}·∂h_t/∂s_t   (t = T−1 … 0)

gives ∂φ_j(s_T)/∂β_i for every example i and query j.  All queries travel together: the adjoint
carries a leading query dimension and each step's vector-Jacobian product is vectorised over it.

The backward pass needs s_t in reverse order.  REPLAY regenerates them from a k-ary tree of
checkpoints: a segment [lo, hi) is split into k parts, the k−1 interior states are computed by
replaying forward from s_lo, and the parts are processed last to first, recursively.  At most
(k−1)·⌈log_k T⌉ states are held at once and each level replays ≤ T steps (O(T log_k T) forward work);
k = 0 stores every state (one level, T−1 states).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.func import vjp, vmap

from tdabench.api.unroll import State, Unroll
from tdabench.toolkit.adjoints import update_adjoint

#: ``phi(params)``: the query observables ``[Q]`` of the model holding ``params``.
Observable = Callable[[dict[str, Tensor]], Tensor]


@dataclass
class ReplayStats:
    """What a metagradient cost: steps replayed forward, states held at the peak and their bytes."""

    steps: int = 0
    forward_steps: int = 0
    stored_states: int = 0
    peak_stored_states: int = 0
    state_bytes: int = 0
    seconds: float = 0.0

    @property
    def peak_stored_bytes(self) -> int:
        return self.peak_stored_states * self.state_bytes

    def as_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "forward_steps": self.forward_steps, "peak_stored_states": self.peak_stored_states,
                "state_bytes": self.state_bytes, "peak_stored_bytes": self.peak_stored_bytes, "seconds": self.seconds}


def _bounds(lo: int, hi: int, branching: int) -> list[int]:
    """Split points of [lo, hi) into ``branching`` near-equal parts (0: parts of one step)."""
    parts = hi - lo if branching == 0 else min(branching, hi - lo)
    return sorted({lo + round(i * (hi - lo) / parts) for i in range(parts + 1)})


def _nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for part in state.values() for t in part.values())


class Replay:
    """∂φ(s_T)/∂β at β = ``beta`` for one unrolled run, by REPLAY with branching factor ``branching``."""

    def __init__(self, unroll: Unroll, branching: int = 2, adjoint: str = "auto") -> None:
        if branching == 1 or branching < 0:
            raise ValueError(f"branching={branching}: use 0 (store every state) or at least 2")
        if adjoint not in ("auto", "closed-form", "autograd"):
            raise ValueError(f"adjoint={adjoint!r}: use 'auto', 'closed-form' or 'autograd'")
        self.unroll, self.branching, self.stats = unroll, branching, ReplayStats(steps=unroll.steps)
        # the closed form needs the step to be Unroll's own (gradient, then the optimiser's update)
        own_step = type(unroll).step is Unroll.step
        if adjoint == "closed-form" and not own_step:
            raise ValueError(f"{type(unroll).__name__} defines its own step: its adjoint needs autograd")
        self.adjoint = adjoint if adjoint != "auto" else "closed-form" if own_step else "autograd"

    def _forward(self, state: State, lo: int, hi: int, beta: Tensor) -> State:
        self.stats.forward_steps += hi - lo
        return self.unroll.run(beta, state, lo, hi)

    def _hold(self, n: int) -> None:
        self.stats.stored_states += n
        self.stats.peak_stored_states = max(self.stats.peak_stored_states, self.stats.stored_states)

    def _leaf(self, state: State, t: int, adj: State, beta: Tensor, out: Tensor) -> State:
        """One step's VJP for every query at once; accumulates into ``out`` ``[n_train, Q]``."""
        if self.adjoint == "closed-form":
            adj_state, adj_w = self._closed_form_leaf(state, t, adj, self.unroll.weights(beta, t))
        else:
            _, pullback = vjp(lambda s, w: self.unroll.step(s, t, w), state, self.unroll.weights(beta, t))
            adj_state, adj_w = vmap(pullback)(adj)                    # adj_w shape: [Q, B]
        out.index_add_(0, self.unroll.schedule[t].to(out.device), adj_w.T.to(out.dtype))
        return adj_state

    def _closed_form_leaf(self, state: State, t: int, adj: State, w: Tensor) -> tuple[State, Tensor]:
        """The same VJP with the optimiser's update differentiated in closed form (``toolkit/adjoints.py``):
        autograd only differentiates the gradient g(θ, w) (a Hessian-vector product and per-example terms)."""
        u = self.unroll
        # reverse over reverse: forward over reverse (jvp of the gradient: H is symmetric) measured 1.2× slower
        g, pullback = vjp(lambda params, w: u.gradient(params, t, w), state["params"], w)
        adj_p, adj_opt, adj_g = update_adjoint(u.optimizer, state["params"], state["opt"], g, t, adj["params"], adj["opt"])
        adj_p_g, adj_w = vmap(pullback)(adj_g)                        # adj_w shape: [Q, B]
        return {"params": {n: adj_p_g[n].add_(adj_p[n]) for n in adj_p}, "opt": adj_opt}, adj_w

    def _segment(self, state: State, lo: int, hi: int, adj: State, beta: Tensor, out: Tensor) -> State:
        """Adjoint at ``lo`` from the adjoint at ``hi``, given s_lo (replaying what it needs)."""
        if hi - lo == 1:
            return self._leaf(state, lo, adj, beta, out)
        bounds = _bounds(lo, hi, self.branching)
        states = [state]
        for a, b in zip(bounds[:-2], bounds[1:-1]):
            states.append(self._forward(states[-1], a, b, beta))
            self._hold(1)
        return self._sweep(states, bounds, adj, beta, out)

    def _sweep(self, states: list[State], bounds: list[int], adj: State, beta: Tensor, out: Tensor) -> State:
        """The parts [bounds[i], bounds[i+1]) last to first, ``states[i]`` holding s at bounds[i]; each
        held state is released once its part is done (``states[0]`` belongs to the caller)."""
        for i in reversed(range(len(bounds) - 1)):
            adj = self._segment(states[i], bounds[i], bounds[i + 1], adj, beta, out)
            if i:
                states.pop()
                self._hold(-1)
        return adj

    def __call__(self, phi: Observable, beta: Tensor,
                 check: Optional[Callable[[State], None]] = None) -> tuple[Tensor, Tensor]:
        """``(scores [n_train, Q], φ(s_T) [Q])`` with scores[i, j] = ∂φ_j(s_T)/∂β_i; ``check(s_T)`` runs
        after the forward run, before the backward pass (to refuse a run cheaply)."""
        start = time.perf_counter()
        s0 = self.unroll.initial()
        self.stats.state_bytes = _nbytes(s0)
        top = _bounds(0, self.unroll.steps, self.branching)
        states = [s0]
        for a, b in zip(top[:-1], top[1:]):                           # the training run, keeping the top level
            states.append(self._forward(states[-1], a, b, beta))
        self._hold(len(states) - 2)
        final = states.pop()
        if check is not None:
            check(final)
        values, pullback = vjp(phi, final["params"])
        eye = torch.eye(values.shape[0], dtype=values.dtype, device=values.device)
        adj_params = vmap(pullback)(eye)[0]                            # ∂φ_j/∂θ_T, each [Q, *shape]
        adj: State = {"params": adj_params,
                      "opt": {n: torch.zeros(values.shape[0], *b.shape, dtype=b.dtype, device=b.device)
                              for n, b in final["opt"].items()}}
        out = torch.zeros(beta.shape[0], values.shape[0], dtype=torch.float64, device=values.device)
        self._sweep(states, top, adj, beta, out)
        self.stats.seconds = time.perf_counter() - start
        return out, values.detach()
