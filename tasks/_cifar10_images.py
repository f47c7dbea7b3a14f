"""CIFAR-10's images as batched tensor operations on the training device: area resizing, per-channel
standardisation, random flips and translations, and the whitening filters of 2×2 patches."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

MEAN = (125.31, 122.95, 113.87)    # per-channel pixel mean of the CIFAR-10 training set (0-255 scale)
STD = (62.99, 62.09, 66.70)


def resize(x: Tensor, size: int) -> Tensor:
    """Area-downsample uint8 images ``[n, 3, 32, 32]`` to ``[n, 3, size, size]`` (identity at 32)."""
    if size == x.shape[-1]:
        return x
    return torch.cat([F.interpolate(part.float(), size=(size, size), mode="area").round().clamp(0, 255).to(torch.uint8)
                      for part in x.split(4096)])


@lru_cache(maxsize=None)
def channel_stats(device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std ``[3, 1, 1]`` on ``device``, built once per device: a host-to-device
    copy on every step would make the host wait for the GPU."""
    return torch.tensor(MEAN, device=device).view(3, 1, 1), torch.tensor(STD, device=device).view(3, 1, 1)


def normalize(x: Tensor) -> Tensor:
    """uint8 (or 0–255 float) images ``[B, 3, H, W]`` → per-channel standardised float32."""
    mean, std = channel_stats(x.device)
    return (x.float() - mean) / std


def augment(x: Tensor, flip: bool, translate: int, gen: torch.Generator) -> Tensor:
    """Random left-right flip and random translation by up to ``translate`` pixels (reflect padding)
    of a whole batch ``[B, C, H, W]`` at once; the result is laid out channels-last in memory."""
    n, _, h, w = x.shape
    if flip:
        coin = torch.rand(n, device=x.device, generator=gen) < 0.5
        x = torch.where(coin.view(n, 1, 1, 1), x.flip(3), x)
    if translate > 0:
        padded = F.pad(x, (translate,) * 4, mode="reflect").permute(0, 2, 3, 1)   # shape: [B, H+2t, W+2t, C]
        shift = torch.randint(0, 2 * translate + 1, (n, 2), device=x.device, generator=gen)
        rows = shift[:, :1] + torch.arange(h, device=x.device)                    # shape: [B, H]
        cols = shift[:, 1:] + torch.arange(w, device=x.device)                    # shape: [B, W]
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        x = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # shape: [B, C, H, W]
    return x


def whitening_filters(images: Tensor, eps: float) -> Tensor:
    """±eigenvectors / √(eigenvalue + eps) of the 2×2-patch covariance of standardised ``images``
    ``[n, 3, H, W]``, as conv filters ``[24, 3, 2, 2]`` (largest eigenvalue first)."""
    patches = F.unfold(normalize(images), kernel_size=2).transpose(1, 2).reshape(-1, 12)  # shape: [P, 12]
    evals, evecs = torch.linalg.eigh((patches.T @ patches).double().cpu() / patches.shape[0])
    filters = (evecs.T / (evals + eps).sqrt()[:, None]).flip(0).reshape(12, 3, 2, 2)
    return torch.cat([filters, -filters]).float().to(images.device)
