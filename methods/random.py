"""random: seeded Gaussian scores — the floor every method must clear (its LDS sits near 0)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.seeds import derive_seed

from tdabench.api.checks import integer


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    salt: int = 0   # change to draw another random baseline for the same seed

    def __post_init__(self) -> None:
        # Any integer is a valid salt; a float or string would hash to a different, surprising seed.
        integer(self, "random", "salt", "any integer, mixed into the seed")


@register_method
class RandomScores(Method):
    name = "random"
    description = "seeded random scores, the no-information baseline (LDS ≈ 0)"
    Config = RandomConfig
    informative = False

    def score(self, ctx: Context) -> Tensor:
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, self.config.salt, 0x8A4D))
        return torch.randn(ctx.n_train, ctx.n_query, generator=gen)  # shape: [n_train, n_query]
