"""A mean loss over many rows evaluated a piece of rows at a time — its value, its gradient and its
Hessian-vector products alike — for solvers that differentiate a whole data set's loss twice (dattri's CG
and Arnoldi): each derivative is a weighted sum over pieces, so one piece's activations are alive at a
time instead of the whole set's, and the result is the whole set's to rounding."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from tdabench.api.task import Batch


def in_pieces(f: Callable[[dict[str, Tensor], Batch], Tensor], rows: int) -> Callable[[dict[str, Tensor], Batch], Tensor]:
    """``f`` (a mean over its data's rows) evaluated ``rows`` at a time — its value, its gradient and its
    Hessian-vector products, the derivatives dattri's CG and Arnoldi take of the whole attribution set: each
    a weighted sum over pieces, so one piece's activations are alive at a time instead of the whole set's."""
    def pieces(data: tuple[Tensor, ...]) -> Iterator[tuple[tuple[Tensor, ...], float]]:
        n = int(data[0].shape[0])
        for start in range(0, n, rows):
            piece = tuple(x[start:start + rows] for x in data)
            yield piece, int(piece[0].shape[0]) / n

    def sum_over(data: tuple[Tensor, ...], term: Callable[[tuple[Tensor, ...]], Any]) -> Any:
        total = None
        for piece, weight in pieces(data):
            part = term(piece)
            part = (part,) if isinstance(part, Tensor) else tuple(part)
            total = [weight * t for t in part] if total is None else [a + weight * t for a, t in zip(total, part)]
        return total

    def build(names: list[str]) -> type:
        def at(values: tuple[Tensor, ...], data: tuple[Tensor, ...]) -> Tensor:
            return f(dict(zip(names, values)), data)

        def keep(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            ctx.k = inputs[0]
            ctx.save_for_backward(*inputs[1:])
            ctx.save_for_forward(*inputs[1:])

        def hessian_times(ctx: Any, v: tuple[Any, ...]) -> list[Tensor]:
            saved = ctx.saved_tensors
            values, data = saved[:ctx.k], saved[ctx.k:]
            v = tuple(torch.zeros_like(x) if t is None else t for x, t in zip(values, v))
            # reverse over reverse (H is symmetric): forward mode through views fails on fake tensors (the planner's)
            return sum_over(data, lambda piece: torch.func.vjp(lambda *w: torch.func.grad(at)(w, piece), *values)[1](v))

        class Gradient(torch.autograd.Function):
            generate_vmap_rule = True

            @staticmethod
            def forward(k: int, *tensors: Tensor) -> tuple[Tensor, ...]:   # torch.func.grad ignores the no_grad here
                return tuple(sum_over(tensors[k:], lambda piece: torch.func.grad(at)(tensors[:k], piece)))

            setup_context = staticmethod(keep)

            @staticmethod
            def backward(ctx: Any, *v: Tensor) -> tuple[Any, ...]:      # H·v, piece by piece (H is symmetric)
                return (None, *hessian_times(ctx, v), *[None] * (len(ctx.saved_tensors) - ctx.k))

            @staticmethod
            def jvp(ctx: Any, _k: Any, *tangents: Any) -> tuple[Tensor, ...]:   # forward mode (Arnoldi's rev-fwd)
                return tuple(hessian_times(ctx, tangents[:ctx.k]))

        class Value(torch.autograd.Function):
            generate_vmap_rule = True

            @staticmethod
            def forward(k: int, *tensors: Tensor) -> Tensor:
                return sum_over(tensors[k:], lambda piece: at(tensors[:k], piece))[0]

            setup_context = staticmethod(keep)

            @staticmethod
            def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
                saved = ctx.saved_tensors
                grads = Gradient.apply(ctx.k, *saved)
                return (None, *(g * x for x in grads), *[None] * (len(saved) - ctx.k))

            @staticmethod
            def jvp(ctx: Any, _k: Any, *tangents: Any) -> Tensor:
                saved = ctx.saved_tensors
                grads = Gradient.apply(ctx.k, *saved)
                return sum((x * t).sum() for x, t in zip(grads, tangents[:ctx.k]) if t is not None)

        return Value

    def g(params: dict[str, Tensor], data: Batch) -> Tensor:
        if int(data[0].shape[0]) <= rows:
            return f(params, data)
        names = list(params)
        return build(names).apply(len(names), *params.values(), *data)

    return g
