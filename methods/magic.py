"""magic: exact metagradients through the whole reference run (MAGIC, 004 §4.2.2), by REPLAY.

score[i, j] = ∂φ_j(s_T)/∂β_i at β = 1, where β_i weights example i's loss in every step of the
reference run (same initialisation, same data order) and s_T is the final state.  That is the score
sign convention exactly: the first-order change of φ_j when example i's weight goes 0 → 1.  For
deterministic training it is the exact linear response of the run, so against a ground truth retrained
in the reference run's data order (``gt.order=reference``) it is the upper reference every approximate
method should be read against.  The task must expose its training as pure steps (``Task.unroll``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tdabench.api.checks import fail, integer, number
from tdabench.api.config import ConfigError
from tdabench.toolkit.metagrad import Replay
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Task
from tdabench.api.unroll import stateless


@dataclass(frozen=True)
class MagicConfig(MethodConfig):
    branching: int = 4          # k of the REPLAY checkpoint tree; 0: store every state (fastest, O(T) memory)
    query_batch: int = 0        # queries differentiated together (0: all; smaller bounds the adjoint's memory)
    tolerance: float = 1e-4     # largest relative gap between the unrolled run and the cached reference model

    def __post_init__(self) -> None:
        integer(self, "magic", "branching", "0 (store every state) or the checkpoint tree's branching ≥ 2", minimum=0)
        if self.branching == 1:
            fail("magic", "branching", 1, "0 or at least 2", "a checkpoint tree needs two branches; 0 stores every state", 2)
        integer(self, "magic", "query_batch", "queries per backward pass; 0: all at once", minimum=0)
        number(self, "magic", "tolerance", "the largest relative gap allowed; 1e-4 covers float32 rounding", above=0)


@register_method
class Magic(Method):
    name = "magic"
    description = "MAGIC: exact metagradient ∂φ_j(s_T)/∂β_i through every training step (REPLAY)"
    Config = MagicConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._extras: dict[str, Any] = {}

    def check(self, task: Task) -> None:
        if not task.unrolls:
            raise ConfigError(f"magic needs the task to expose its training as pure steps (the Task.unroll hook); "
                              f"task {task.name} cannot: {task.unroll_unavailable()}")

    def score(self, ctx: Context) -> Tensor:
        task, cfg = ctx.task, self.config
        self._extras = {}
        unroll = task.unroll(task.make_model(ctx.train_seed), torch.arange(ctx.n_train), ctx.train_seed)
        template = unroll.model(unroll.initial())            # eval mode: how φ is measured
        beta = unroll.ones()
        size = cfg.query_batch or ctx.n_query
        parts, stats = [], []
        for start in range(0, ctx.n_query, size):
            rows = tuple(t[start : start + size] for t in ctx.query_data)

            def phi(params: dict[str, Tensor], rows: tuple = rows) -> Tensor:
                out = task.measurement(stateless(template, params), rows)
                return out.reshape(rows[0].shape[0], -1).mean(1)          # shape: [Q]

            replay = Replay(unroll, cfg.branching)
            check = (lambda final: self._check_reproduces(ctx, unroll.model(final))) if start == 0 else None
            scores, _ = replay(phi, beta, check)        # the check runs before the expensive backward pass
            parts.append(scores)
            stats.append(replay.stats)
        self._extras |= {**stats[0].as_dict(), "seconds": sum(s.seconds for s in stats), "query_batches": len(stats),
                        "forward_steps": sum(s.forward_steps for s in stats)}
        return torch.cat(parts, dim=1).float()                   # shape: [n_train, n_query]

    def _check_reproduces(self, ctx: Context, unrolled: torch.nn.Module) -> None:
        """The unrolled run must end where the context's model is (else it is another run: a task whose
        unroll and train disagree, or a model from the middle of training, which magic does not score)."""
        values = ctx.task.measure(unrolled, ctx.query_data)
        expected = ctx.task.measure(ctx.model, ctx.query_data)
        gap = float((values - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
        self._extras["reproduction_gap"] = gap
        if gap > self.config.tolerance:
            raise RuntimeError(f"the unrolled run of {ctx.task.name} does not end at the given model: query "
                               f"measurements differ by {gap:.2e} (relative) > magic.tolerance={self.config.tolerance}; "
                               "either the task's unroll and train disagree, or the model is a checkpoint from the "
                               "middle of training (magic differentiates the whole run: score it at the end)")

    def extras(self) -> dict[str, Any]:
        return dict(self._extras)
