"""Per-example gradients (torch.func), parameter selection and random projection — shared by
every gradient-based method (GradSim, IF, TracIn, TRAK, ...)."""
from __future__ import annotations

import re
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tdabench.api.task import Batch, batches

#: ``fn(model, batch) -> Tensor[B]``: a per-example scalar such as ``Task.loss``.
ExampleFn = Callable[[nn.Module, Batch], Tensor]


def select_params(model: nn.Module, patterns: Sequence[str] = ()) -> dict[str, Tensor]:
    """Trainable parameters whose name matches any regex in ``patterns`` (all when empty)."""
    chosen = {n: p for n, p in model.named_parameters() if p.requires_grad
              and (not patterns or any(re.search(pat, n) for pat in patterns))}
    if not chosen:
        names = ", ".join(n for n, _ in model.named_parameters())
        raise ValueError(f"no parameter matches {list(patterns)}; the model's parameters are: {names}")
    return chosen


def num_params(params: dict[str, Tensor]) -> int:
    return sum(p.numel() for p in params.values())


class _Apply(nn.Module):
    """Wraps ``fn(model, batch)`` as a module so ``functional_call`` can swap the model's tensors."""

    def __init__(self, model: nn.Module, fn: ExampleFn) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *batch: Tensor) -> Tensor:
        return self.fn(self.model, batch)


class Projector:
    """A seeded Gaussian random projection ``R^d → R^k`` (entries N(0, 1/k)).

    The matrix is generated in row blocks on ``device`` from the seed, so it is identical on every
    call for a given seed and device type (CPU and CUDA draw different, equally random matrices);
    it is kept in memory when ``d·k`` is at most ``cache_limit`` entries, else regenerated per call
    block by block (cheap on a GPU).
    """

    def __init__(self, dim_in: int, dim_out: int, seed: int, device: torch.device,
                 block: int = 8192, cache_limit: int = 2**28) -> None:
        self.dim_in, self.dim_out, self.seed, self.block = dim_in, dim_out, seed, block
        self.device = torch.device(device)
        self._matrix = self._full() if dim_in * dim_out <= cache_limit else None

    def _rows(self, start: int, out: Optional[Tensor] = None) -> Tensor:
        """Rows ``start`` … of the matrix (a block), drawn into ``out`` when given."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + start)
        rows = min(self.block, self.dim_in - start)
        if out is None:
            out = torch.empty(rows, self.dim_out, device=self.device)
        return torch.randn(rows, self.dim_out, generator=gen, device=self.device, out=out).div_(self.dim_out ** 0.5)

    def _full(self) -> Tensor:
        # each block drawn in place: concatenating the blocks held the whole matrix twice for a moment
        full = torch.empty(self.dim_in, self.dim_out, device=self.device)
        for s in range(0, self.dim_in, self.block):
            self._rows(s, full[s : s + self.block])
        return full

    @property
    def regenerates(self) -> bool:
        """True when the matrix is too large to keep and is drawn again on every call."""
        return self._matrix is None

    def __call__(self, g: Tensor) -> Tensor:
        """Project ``g`` of shape ``[B, d]`` to ``[B, k]``."""
        return self.many([g])[0]

    def many(self, gs: Sequence[Tensor]) -> list[Tensor]:
        """Project each ``[B_i, d]`` in ``gs`` (the same as one call each), drawing a regenerated
        matrix once for all of them."""
        if self._matrix is not None:
            return [g @ self._matrix.to(g.dtype) for g in gs]
        outs = [torch.zeros(g.shape[0], self.dim_out, device=g.device, dtype=g.dtype) for g in gs]
        for s in range(0, self.dim_in, self.block):
            rows = self._rows(s)
            for g, out in zip(gs, outs):
                out += g[:, s : s + self.block] @ rows.to(g.dtype)
        return outs


#: Per-example gradients held back for one projection when the projector regenerates its matrix on
#: every call: one regeneration per 2 GiB of gradients, not per pass (Pythia-14M's passes of 5
#: sequences drew the 14 M × 4,096 matrix 870 times for GradSim's 4,352 sequences).
GATHER_BYTES = 2**31


def project_all(grads: Iterable[Tensor], projector: Optional[Projector], gather_bytes: int = GATHER_BYTES) -> Tensor:
    """``grads`` (``[B, d]`` each, in order) projected and concatenated, ``[n, k]`` (``[n, d]`` with
    no projector); a regenerating projector takes them in groups of up to ``gather_bytes``."""
    out: list[Tensor] = []
    pending: list[Tensor] = []
    held = 0
    for g in grads:
        if projector is None or not projector.regenerates:
            out.append(projector(g) if projector is not None else g)
            continue
        if pending and held + g.numel() * g.element_size() > gather_bytes:
            out += projector.many(pending)
            pending, held = [], 0
        pending.append(g)
        held += g.numel() * g.element_size()
    if pending:
        out += projector.many(pending)
    return torch.cat(out)


def per_example_grads(model: nn.Module, fn: ExampleFn, data: Batch,
                      params: Optional[dict[str, Tensor]] = None, batch_size: int = 64,
                      projector: Optional[Projector] = None) -> Tensor:
    """Gradients of ``fn`` per example w.r.t. ``params``, shape ``[n, d]`` (``[n, k]`` projected).

    The model is put in eval mode (BatchNorm uses running statistics, dropout is off) and restored
    afterwards.  Memory is bounded by ``batch_size`` examples at a time (and, before a projection
    that regenerates its matrix, by ``GATHER_BYTES`` of gradients held for it).
    """
    params = params if params is not None else select_params(model)
    wrapper = _Apply(model, fn)
    frozen = {f"model.{n}": t.detach() for n, t in list(model.named_parameters()) + list(model.named_buffers())
              if n not in params}
    names = list(params)

    def one(flat: tuple[Tensor, ...], *example: Tensor) -> Tensor:
        tensors = {f"model.{n}": t for n, t in zip(names, flat)} | frozen
        out = functional_call(wrapper, tensors, tuple(e.unsqueeze(0) for e in example))
        return out.reshape(())

    grad_fn = vmap(grad(one), in_dims=(None,) + (0,) * len(data))
    detached = tuple(params[n].detach() for n in names)
    was_training = model.training
    model.eval()
    try:
        return project_all((torch.cat([t.reshape(t.shape[0], -1) for t in grad_fn(detached, *b)], dim=1)  # shape: [B, d]
                            for b in batches(data, batch_size)), projector)
    finally:
        model.train(was_training)


def flat_function(model: nn.Module, params: dict[str, Tensor],
                  fn: Callable[[nn.Module], Tensor]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``fn(model)`` as a function of the flat vector of ``params`` (others frozen), and that
    vector at the model's current values, shape ``[d]``."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    frozen = {n: t.detach() for n, t in list(model.named_parameters()) + list(model.named_buffers()) if n not in params}
    wrapper = _Apply(model, lambda m, _: fn(m))

    def f(flat: Tensor) -> Tensor:
        pieces = torch.split(flat, sizes)
        tensors = {f"model.{n}": p.reshape(s) for n, p, s in zip(names, pieces, shapes)}
        tensors |= {f"model.{n}": t for n, t in frozen.items()}
        return functional_call(wrapper, tensors, ())

    return f, torch.cat([params[n].detach().reshape(-1) for n in names])
