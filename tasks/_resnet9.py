"""The ResNet-9 of the fast CIFAR-10 recipe (Jordan 2024): BatchNorm with a learnt shift only, identity-initialised
3×3 convolutions, a frozen whitening layer and a head scaled by 1/9 (``cifar10``'s model)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShiftNorm(nn.Module):
    """BatchNorm with its scale fixed at 1 and a learnt shift (the only trained normalisation tensor)."""

    def __init__(self, channels: int, momentum: float) -> None:
        super().__init__()
        self.momentum = 1.0 - momentum
        self.shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("unit", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.unit, self.shift, self.training,
                            self.momentum, 1e-12)


def conv3(c_in: int, c_out: int) -> nn.Conv2d:
    """3×3 conv without bias whose first ``c_in`` filters start as the identity (Dirac)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


class Block(nn.Module):
    """conv → 2× max-pool → norm → GELU → conv → norm → GELU."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1, self.norm1 = conv3(c_in, c_out), ShiftNorm(c_out, bn_momentum)
        self.conv2, self.norm2 = conv3(c_out, c_out), ShiftNorm(c_out, bn_momentum)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class ResNet9(nn.Module):
    """Frozen whitening conv (buffer ``whiten``, 24 filters of 2×2) → GELU → three blocks → global
    max-pool → linear head (no bias) scaled by 1/9.  Input: standardised images ``[B, 3, H, W]``."""

    def __init__(self, whiten: Tensor, widths: tuple[int, ...], bn_momentum: float, classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("whiten", whiten.clone())               # shape: [24, 3, 2, 2]
        chans = (whiten.shape[0], *widths)
        self.blocks = nn.Sequential(*(Block(chans[i], chans[i + 1], bn_momentum) for i in range(3)))
        self.head = nn.Linear(widths[-1], classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.gelu(F.conv2d(x, self.whiten)))
        return self.head(x.amax(dim=(2, 3))) / 9.0                  # shape: [B, C]
