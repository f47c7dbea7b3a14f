"""Closed-form learning dynamics of a two-layer linear network, and the influence they imply (002 C.6).

A network y = W₂W₁x trained by gradient flow on (1/N)·Σᵢ ½‖W₂W₁eᵢ − yᵢ‖² over one-hot inputs eᵢ
(Saxe et al.'s setting: whitened inputs) learns the singular modes of the target matrix T = [y₁ … y_N]
one at a time: with T = U S Vᵀ, the network's map is W(t) = U a(t; S) Vᵀ, where each mode's strength
follows the sigmoid (002 eq. 30)

    a(t; s) = s·e^{2st/τ} / (e^{2st/τ} − 1 + s/a₀),     τ = N, t = learning rate × step,

from a small initial strength a₀ (exact for aligned, balanced initial weights; a small random
initialisation aligns itself early, with a₀ ≈ hidden·σ²/2).

Writing a(s) = s·g(s²) turns the map into a matrix function, W(T) = T·g(TᵀT), which stays smooth where
singular values coincide (the tree's modes do).  Its derivative along dT follows from the
Daleckii–Krein formula on the eigen-decomposition of TᵀT — the first-order singular-subspace
perturbation of 002 C.6, degenerate blocks included, without choosing a basis inside a block.
Upweighting item i by ε moves T by ε·yᵢeᵢᵀ (002 eq. 36, the cross-covariance); leaving it out is
ε = −1, for which the closed form is exact (the item's input direction is then never trained).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DeepLinear:
    """A task's two-layer linear network, as the closed form needs it: the targets ``[N, F]`` of its N
    one-hot training items, the GD step size, and the initial mode strength."""

    targets: Tensor
    lr: float
    a0: float

    def __post_init__(self) -> None:
        if self.targets.dim() != 2 or self.lr <= 0 or self.a0 <= 0:
            raise ValueError(f"DeepLinear needs targets [N, F], lr > 0 and a0 > 0 (got {tuple(self.targets.shape)}, "
                             f"{self.lr}, {self.a0})")

    @property
    def tau(self) -> float:
        """The time constant: the objective averages over the N items, so τ = N in units of lr × steps."""
        return float(self.targets.shape[0])

    def strength(self, s: Tensor, step: int) -> Tensor:
        """a(t; s) = s·g(s²) at ``step`` (elementwise, s ≥ 0; 0 for a mode the data lack, s = 0)."""
        safe = s.clamp(min=1e-12)
        return torch.where(s > 1e-12, safe * self.g(safe * safe, step), torch.zeros_like(s))

    def g(self, lam: Tensor, step: int) -> Tensor:
        """g(λ) = e^{c√λ} / (e^{c√λ} − 1 + √λ/a₀), c = 2t/τ, at ``step`` (elementwise, λ > 0): the mode formula,
        written once; a(s) = s·g(s²)."""
        c = 2 * self.lr * step / self.tau
        s = lam.sqrt()
        return torch.exp(c * s) / (torch.expm1(c * s) + s / self.a0)

    def map(self, target: Tensor, step: int) -> Tensor:
        """W(t) = U a(t; S) Vᵀ for ``target`` T ``[F, N]``: the network's map after ``step`` GD steps."""
        u, s, vh = torch.linalg.svd(target.double(), full_matrices=False)
        return u @ torch.diag(self.strength(s, step)) @ vh

    def map_derivative(self, target: Tensor, direction: Tensor, step: int, tol: float = 1e-9) -> Tensor:
        """dW(T)[dT]: the first-order change of the map when T moves along ``direction`` (Daleckii–Krein;
        eigenvalues of TᵀT within ``tol`` of the largest are one degenerate block)."""
        return self._derivative(self._spectrum(target, step, tol), target, direction)

    def _spectrum(self, target: Tensor, step: int, tol: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What every direction's derivative at T shares: TᵀT's eigenvalues λ and vectors V, g(λ), and the
        divided differences of g over pairs of eigenvalues (g' within a degenerate block)."""
        t = target.double()
        lam, v = torch.linalg.eigh(t.T @ t)
        if lam.min() <= tol * lam.max():
            raise ValueError("the closed form's derivative needs targets of full column rank (every item its own "
                             f"mode); the smallest eigenvalue of TᵀT is {lam.min().item():.3g}")
        lam_req = lam.clone().requires_grad_(True)
        values = self.g(lam_req, step)
        slopes = torch.autograd.grad(values.sum(), lam_req)[0]               # g'(λ), exact (elementwise)
        values = values.detach()
        gap = lam[:, None] - lam[None, :]
        close = gap.abs() <= tol * lam.abs().max().clamp(min=1e-30)
        divided = torch.where(close, (slopes[:, None] + slopes[None, :]) / 2,
                              (values[:, None] - values[None, :]) / torch.where(close, torch.ones_like(gap), gap))
        return lam, v, values, divided

    @staticmethod
    def _derivative(spectrum: tuple[Tensor, Tensor, Tensor, Tensor], target: Tensor, direction: Tensor) -> Tensor:
        _, v, values, divided = spectrum
        t, dt = target.double(), direction.double()
        dc = v.T @ (dt.T @ t + t.T @ dt) @ v
        return dt @ (v * values) @ v.T + t @ (v @ (divided * dc) @ v.T)

    def influence(self, step: int, queries: tuple[Tensor, Tensor]) -> Tensor:
        """Scores ``[N, Q]`` at ``step``: the first-order change of query j's loss ½‖W x_j − y_j‖² when
        item i is upweighted (002 C.6), i.e. the predicted effect of including i (tdabench's sign)."""
        t = self.targets.double().T                                          # shape: [F, N]
        x, y = queries[0].double(), queries[1].double()                      # shape: [Q, N], [Q, F]
        residual = x @ self.map(t, step).T - y                               # shape: [Q, F]
        spectrum = self._spectrum(t, step, 1e-9)                             # once for every item's direction
        out = torch.empty(t.shape[1], x.shape[0], dtype=torch.float64)
        for i in range(t.shape[1]):
            dt = torch.zeros_like(t)
            dt[:, i] = t[:, i]                                               # ε·yᵢeᵢᵀ
            out[i] = (residual * (x @ self._derivative(spectrum, t, dt).T)).sum(1)
        return out

    def loo(self, step: int, queries: tuple[Tensor, Tensor]) -> Tensor:
        """``[N, Q]``: query j's loss with every item minus its loss with item i left out, at ``step``, from
        the closed form (exact for the ablation: the left-out item's column of T is zero)."""
        t = self.targets.double().T
        x, y = queries[0].double(), queries[1].double()

        def losses(target: Tensor) -> Tensor:
            return 0.5 * ((x @ self.map(target, step).T - y) ** 2).sum(1)   # shape: [Q]

        full = losses(t)
        out = torch.empty(t.shape[1], x.shape[0], dtype=torch.float64)
        for i in range(t.shape[1]):
            ablated = t.clone()
            ablated[:, i] = 0
            out[i] = full - losses(ablated)
        return out
