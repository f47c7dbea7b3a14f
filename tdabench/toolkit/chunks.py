"""How many retrains one unit of ground-truth work trains together: what the executors run and what
``tdabench plan`` traces (a chunk's stacked models share one pass, so their memory adds up)."""
from __future__ import annotations

import math

from tdabench.api.task import Task

#: Memory a chunk of stacked models may take (weights, gradients, Adam moments, final copies).
CHUNK_BYTES = 2**30


def auto_chunk(task: Task, n_jobs: int, workers: int, requested: int = 0, order: str = "independent",
               checkpoints: int = 0) -> int:
    """Retrains per unit of work: 1 unless they are trained many at once (the reference order's
    reweighted runs, or ``train_many`` when measured at the end only); else ``requested``, or the most
    that keep every worker busy and fit ``CHUNK_BYTES`` (≈ 8 copies of the weights per model), at most 256."""
    if not (order == "reference" or task.trains_many and not checkpoints):
        return 1
    if requested:
        return requested
    params = sum(p.numel() * p.element_size() for p in task.make_model(0).parameters())
    return max(1, min(256, CHUNK_BYTES // (8 * params), math.ceil(n_jobs / max(1, workers))))
