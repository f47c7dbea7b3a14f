"""Seeds: one derivation rule shared by the pipeline and every plug-in."""
from __future__ import annotations

from tdabench.api.config import content_hash


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by ``parts`` (stable across runs, platforms and Python versions)."""
    return int(content_hash(list(parts), 8), 16) & 0x7FFFFFFF


def reference_seed(seed: int) -> int:
    """The seed the reference model of run seed ``seed`` is initialised and trained with (and every
    reference-order retrain reweights)."""
    return derive_seed(seed, 0x4EF0)
