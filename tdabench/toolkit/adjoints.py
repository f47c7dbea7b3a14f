"""Closed-form adjoints of the optimisers' updates (``api.unroll.Optimizer``) for REPLAY's backward pass.

REPLAY differentiates every training step for all queries at once: the adjoints carry a leading query
dimension ``[Q, *shape]``.  Through autograd, each step's vector-Jacobian product of an Adam update
replays the update's dozen elementwise operations on ``[Q, *shape]`` tensors under ``vmap``, and on
digits that elementwise work was three quarters of MAGIC's backward time.  Written out, the update's
adjoint is a handful of fused operations; only the gradient's own vector-Jacobian product (a
Hessian-vector product and the per-example gradients, for the example weights) is left to autograd.

For Adam (``torch.optim``'s order of operations; ``g₁`` the gradient with any L2 term added, ``p̃`` the
parameters after AdamW's decay, ``a = lr/(1 − β₁ᵗ⁺¹)``, ``c = √(1 − β₂ᵗ⁺¹)``, ``s = √max(v', tiny)``):

    m' = m + (g₁ − m)(1 − β₁)      v' = β₂v + (1 − β₂)g₁²      p' = p̃ − a·m'/(s/c + ε)

so, from the adjoints ``λp', λm', λv'`` of the outputs,

    Λm = λm' − a·λp'/(s/c + ε)                      λm = β₁·Λm
    Λv = λv' + a·λp'·m'/(s/c + ε)² · 1[v' ≥ tiny]/(2cs)  λv = β₂·Λv
    λg₁ = (1 − β₁)·Λm + 2(1 − β₂)·g₁·Λv             λp = λp'·(1 − lr·wd) (AdamW) or λp' + wd·λg₁ (Adam, L2)

and for SGD with momentum μ (``m' = μm + g₁``, ``p' = p − lr·m'``): ``Λm = λm' − lr·λp'``, ``λm = μΛm``,
``λg₁ = Λm``.  ``tests/test_metagrad.py`` checks each against autograd's adjoint to 1e-10 in float64.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tdabench.api.unroll import Optimizer


def update_adjoint(opt: Optimizer, params: dict[str, Tensor], buffers: dict[str, Tensor], grads: dict[str, Tensor],
                   t: int, adj_params: dict[str, Tensor], adj_buffers: dict[str, Tensor]
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """``(λp, λbuffers, λg)``: the adjoints of update t's inputs (parameters, buffers, gradient) from those
    of its outputs; each adjoint ``[Q, *shape]``, the state and gradient ``[*shape]``."""
    lr, wd = opt.lr_at(t), opt.weight_decay
    out_p: dict[str, Tensor] = {}
    out_b: dict[str, Tensor] = {}
    out_g: dict[str, Tensor] = {}
    for n, p in params.items():
        lam_p, g = adj_params[n], grads[n]
        if opt.kind == "sgd":
            if opt.momentum:
                big_m = adj_buffers[f"m.{n}"].add(lam_p, alpha=-lr)          # shape: [Q, *shape]
                out_b[f"m.{n}"] = big_m * opt.momentum
                lam_g = big_m
            else:
                lam_g = lam_p * -lr
            out_p[n] = lam_p.add(lam_g, alpha=wd) if wd else lam_p
            out_g[n] = lam_g
            continue
        # the [*shape] factors first, then a few fused operations on the [Q, *shape] adjoints
        g1 = g + wd * p if opt.kind == "adam" and wd else g
        b1, b2 = opt.betas
        m_new = buffers[f"m.{n}"] + (g1 - buffers[f"m.{n}"]) * (1 - b1)
        v_new = b2 * buffers[f"v.{n}"] + (1 - b2) * g1 * g1
        tiny = torch.finfo(v_new.dtype).tiny
        s = v_new.clamp_min(tiny).sqrt()
        c = (1 - b2 ** (t + 1)) ** 0.5
        a = lr / (1 - b1 ** (t + 1))
        denom = s / c + opt.eps
        dm = -a / denom                                                        # ∂p'/∂m'
        dv = (a * m_new / (denom * denom * (2 * c * s))) * (v_new >= tiny)     # ∂p'/∂v'
        big_m = torch.addcmul(adj_buffers[f"m.{n}"], lam_p, dm)
        big_v = torch.addcmul(adj_buffers[f"v.{n}"], lam_p, dv)
        lam_g = torch.addcmul(big_m * (1 - b1), big_v, (2 * (1 - b2)) * g1)
        out_b[f"m.{n}"], out_b[f"v.{n}"] = big_m.mul_(b1), big_v.mul_(b2)
        if opt.kind == "adamw":
            out_p[n] = lam_p * (1 - lr * wd) if wd else lam_p
        else:
            out_p[n] = lam_p.add(lam_g, alpha=wd) if wd else lam_p
        out_g[n] = lam_g
    return out_p, out_b, out_g
