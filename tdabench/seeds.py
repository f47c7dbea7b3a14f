"""Seeds: one derivation rule shared by the pipeline and every plug-in."""
from __future__ import annotations

from .config import content_hash


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by ``parts`` (stable across runs, platforms and Python versions)."""
    return int(content_hash(list(parts), 8), 16) & 0x7FFFFFFF
