"""Where ``tdabench plan`` traces a stage and how it extrapolates to the run's sizes.

A stage is traced at a few small sizes — rows of training data, queries, and the iteration counts of
the method's loops (SGLD chains and draws, solver iterations, ensemble members) — and its peak memory
and FLOPs are extended to the configured sizes by a multilinear fit through the two largest traced
values of each: costs of the form a + b·rows + c·queries + d·chains·draws·(rows + queries) … are
extrapolated exactly, and a trace costs the operators of a few iterations, not of thousands."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

#: Config fields that size a stage's memory (batch sizes, projection, micro-batches).
KNOBS = ("batch", "proj_dim", "micro", "chunk")

#: Config fields (integers) that count a loop's iterations.  A method's cost is close to multilinear
#: in them (BIF: chains × (burn-in + draws × thin) SGLD steps and chains × draws recordings).
LOOPS = ("chains", "draws", "burn_in", "thin", "max_iter", "depth", "repeats", "models", "checkpoints",
         "segments", "checkpoints_per_segment")

#: Loop counts traced: (LOW, LOW + 1); a loop configured at LOW + 1 or fewer is traced as configured.
LOOP_LOW = 2


def knobs(config: Any) -> dict[str, Any]:
    """The config fields that size a stage's memory."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if any(k in f.name for k in KNOBS)}


def trace_sizes(n: int, *configs: Any, query: bool = False, batch: int = 1) -> tuple[int, ...]:
    """Rows to trace at: multiples (1, 2, 3, 4 for the training rows; 1, 2 for the queries) of at
    least two of every batch that may cut that set (so every batch-sized buffer is seen full), those
    below ``n``; or all ``n`` when fewer than two are.  The last two set the slope: a peak set by a
    fixed part at small sizes (the queries' gradients) grows faster once the rows dominate it.
    ``query``: the query set, which any batch setting may cut (the operator count depends on the
    number of batches, not their size); the training rows: the settings not named ``query_*``."""
    batch = max([batch] + [int(v) for c in configs for k, v in knobs(c).items()
                           if "batch" in k and (query or "query" not in k) and isinstance(v, int)])
    small = max(16, 2 * batch)
    sizes = tuple(small * k for k in ((1, 2) if query else (1, 2, 3, 4)) if small * k < n)
    return sizes if len(sizes) > 1 else (n,)


def loops(config: Any) -> dict[str, int]:
    """The loop counts of ``config`` that are traced at two smaller values and extrapolated."""
    return {f.name: v for f in dataclasses.fields(config) if f.name in LOOPS
            and isinstance(v := getattr(config, f.name), int) and not isinstance(v, bool) and v > LOOP_LOW + 1}


def loop_corners(config: Any) -> list[dict[str, int]]:
    """Every combination of (LOW, LOW + 1) for the loops of ``config`` (the first: all LOW)."""
    names = list(loops(config))
    return [dict(zip(names, values)) for values in itertools.product((LOOP_LOW, LOOP_LOW + 1), repeat=len(names))]


def multilinear(values: dict[tuple[int, ...], float], target: tuple[int, ...], loop_order: int = 0) -> float:
    """The multilinear function through the two largest traced values of each coordinate, at
    ``target``: anchored at the largest corner, each coefficient (a slope, or a cross term of several
    coordinates) clamped at 0 — costs do not shrink with more data or more iterations — and never
    below the largest traced value.  A coordinate traced at one value is held there.
    ``loop_order`` > 0: leave out the cross terms of more than that many loop counts (coordinates
    after rows and queries) — for peak memory, which stores at most chains × draws of anything: its
    higher differences at a few iterations are allocation order and rounding, and the product of the
    loops' long steps would blow them up (on digits' BIF, 1.37× the peak of every step traced)."""
    dims = len(target)
    tops = [sorted({k[d] for k in values})[-2:] for d in range(dims)]
    varied = [d for d in range(dims) if len(tops[d]) == 2]
    steps = {d: (target[d] - tops[d][1]) / (tops[d][1] - tops[d][0]) for d in varied}
    anchor = tuple(t[-1] for t in tops)
    total = values[anchor]
    for size in range(1, len(varied) + 1):
        for subset in itertools.combinations(varied, size):
            if loop_order and sum(d >= 2 for d in subset) > loop_order:
                continue
            coefficient = 0.0
            for lowered in range(size + 1):
                for low in itertools.combinations(subset, lowered):
                    corner = tuple(tops[d][0] if d in low else anchor[d] for d in range(dims))
                    coefficient += (-1) ** lowered * values[corner]
            weight = 1.0
            for d in subset:
                weight *= steps[d]
            total += max(0.0, coefficient) * weight
    return max(max(values.values()), total)
