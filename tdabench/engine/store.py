"""Stored score matrices: every run keeps its scores next to its record, so metrics can be
recomputed later (``tdabench evaluate``) without running a method again."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from tdabench.api.config import ConfigError
from tdabench.toolkit.files import save_tensor


@dataclass(frozen=True)
class StoreConfig:
    """How score matrices are kept (``--set store.KEY=VALUE``)."""

    dtype: Literal["float32", "float16"] = "float32"   # float16 halves the file (≈3 significant digits)
    topk: int = 0            # 0: the dense matrix; k > 0: only the k largest-magnitude scores per query (sparse)
    max_mb: float = 2048.0   # refuse, before any work, a stored matrix larger than this

    def __post_init__(self) -> None:
        if self.topk < 0:
            raise ConfigError(f"store.topk={self.topk}: must be 0 (dense) or a positive count per query")
        if not self.max_mb > 0:
            raise ConfigError(f"store.max_mb={self.max_mb}: must be positive")

    def size_mb(self, n_train: int, n_query: int) -> float:
        """The stored size of an ``[n_train, n_query]`` matrix (a sparse entry keeps a value and an index)."""
        width = 2 if self.dtype == "float16" else 4
        entries = n_train * n_query if self.topk == 0 else min(self.topk, n_train) * n_query
        return entries * (width + (8 if self.topk else 0)) / 2**20

    def check(self, n_train: int, n_query: int) -> None:
        """Refuse a matrix over ``max_mb``, naming the settings that shrink it."""
        size = self.size_mb(n_train, n_query)
        if size > self.max_mb:
            raise ConfigError(f"the score matrix [{n_train}, {n_query}] takes {size:,.0f} MB as stored "
                              f"(store.dtype={self.dtype}, store.topk={self.topk}), above store.max_mb={self.max_mb:g}; "
                              f"set store.dtype=float16, store.topk=K (keep the K largest scores per query) "
                              f"or raise store.max_mb")


def save_scores(path: Path, scores: Tensor, cfg: StoreConfig) -> None:
    """Write ``scores`` ``[n_train, n_query]`` in ``cfg``'s form, atomically."""
    scores = scores.detach().float().cpu()
    dtype = getattr(torch, cfg.dtype)
    if cfg.topk == 0:
        save_tensor(path, {"dense": scores.to(dtype)})
        return
    k = min(cfg.topk, scores.shape[0])
    index = scores.abs().topk(k, dim=0).indices                     # shape: [k, n_query]
    save_tensor(path, {"shape": tuple(scores.shape), "index": index, "values": scores.gather(0, index).to(dtype)})


def load_scores(path: Path) -> tuple[Tensor, bool]:
    """The stored scores as a dense float32 ``[n_train, n_query]`` and whether they are exact
    (False for a top-k form, whose other entries read as 0)."""
    blob = torch.load(path, map_location="cpu")
    if "dense" in blob:
        return blob["dense"].float(), True
    dense = torch.zeros(blob["shape"])
    dense.scatter_(0, blob["index"], blob["values"].float())
    return dense, False
