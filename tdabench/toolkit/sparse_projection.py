"""A sparse Johnson–Lindenstrauss projection ``R^d → R^k`` (Kane and Nelson's block construction):
the k outputs are cut into ``nnz`` blocks, and every input coordinate adds ±1/√nnz to one random
output of each block.  Inner products are preserved in expectation, E⟨Pg, Ph⟩ = ⟨g, h⟩, with the
dense Gaussian projection's error for nnz of a few, at a cost of d·nnz per example instead of d·k
(1,024 times less at k = 2,048 and nnz = 2).  GraSS sparsifies gradients for the same reason.

Seeded: the same seed gives the same matrix on every call and in every process (drawn on the CPU,
so CPU and CUDA runs project alike).  Held as a CSR matrix of d·nnz entries.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor


class SparseProjector:
    """``SparseProjector(d, k, seed, device, nnz)(g)`` maps ``g`` of shape ``[B, d]`` to ``[B, k]``."""

    def __init__(self, dim_in: int, dim_out: int, seed: int, device: torch.device | str = "cpu", nnz: int = 2) -> None:
        if not 1 <= nnz <= dim_out:
            raise ValueError(f"nnz={nnz}: the nonzeros per input coordinate must be between 1 and proj_dim={dim_out}")
        self.dim_in, self.dim_out, self.nnz = dim_in, dim_out, nnz
        gen = torch.Generator().manual_seed(seed)
        edges = torch.linspace(0, dim_out, nnz + 1).round().long()          # block t covers outputs [edges[t], edges[t+1])
        width = (edges[1:] - edges[:-1]).unsqueeze(0)                        # shape: [1, nnz]
        rows = edges[:-1] + (torch.rand(dim_in, nnz, generator=gen) * width).long().clamp(max=width - 1)  # shape: [d, nnz]
        signs = torch.randint(0, 2, (dim_in, nnz), generator=gen).float() * 2 - 1
        # Pᵀ as CSR [k, d]: (Pᵀ gᵀ)ᵀ = g P, one sparse-dense product per batch
        order = rows.flatten().argsort(stable=True)
        cols = torch.arange(dim_in).repeat_interleave(nnz)[order]
        crow = torch.zeros(dim_out + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows.flatten(), minlength=dim_out).cumsum(0)
        values = (signs.flatten() / nnz**0.5)[order]
        with warnings.catch_warnings():   # torch calls CSR support beta; the product used here is long-standing
            warnings.simplefilter("ignore", UserWarning)
            self.matrix_t = torch.sparse_csr_tensor(crow, cols, values, (dim_out, dim_in)).to(device)

    def __call__(self, g: Tensor) -> Tensor:
        """Project ``g`` of shape ``[B, d]`` to ``[B, k]`` (float32 arithmetic)."""
        return (self.matrix_t @ g.float().T.contiguous()).T                 # shape: [B, k]
