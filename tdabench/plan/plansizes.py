"""Where ``tdabench plan`` traces a stage and how it extrapolates to the run's sizes.

A stage is traced at a few small sizes — rows of training data, queries, and the iteration counts of
the method's loops (SGLD chains and draws, solver iterations, ensemble members) — and its peak memory
and FLOPs are extended to the configured sizes by a multilinear fit through the two largest traced
values of each: costs of the form a + b·rows + c·queries + d·chains·draws·(rows + queries) … are
extrapolated exactly, and a trace costs the operators of a few iterations, not of thousands."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable

from tdabench.api.task import Task, take

#: Config fields that size a stage's memory (batch sizes, projection, micro-batches).
KNOBS = ("batch", "proj_dim", "micro", "chunk")

#: Config fields (integers) that count a loop's iterations.  A method's cost is close to multilinear
#: in them (BIF: chains × (burn-in + draws × thin) SGLD steps and chains × draws recordings).
LOOPS = ("chains", "draws", "burn_in", "thin", "max_iter", "depth", "repeats", "models", "checkpoints",
         "segments", "checkpoints_per_segment")

#: Task config fields (integers) that count training iterations (CIFAR-10's 100 warmup steps before
#: every run, digits' 20 epochs): a retrain's cost is close to linear in each, so a retrain — and a
#: method that trains models — is traced at two small counts of them too.  Keys carry a ``task.`` prefix.
TASK_LOOPS = ("epochs", "warmup_steps", "steps")

#: Loop counts traced: (LOW, LOW + 1); a loop configured at LOW + 1 or fewer is traced as configured.
LOOP_LOW = 2


def knobs(config: Any) -> dict[str, Any]:
    """The config fields that size a stage's memory."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if any(k in f.name for k in KNOBS)}


def trace_sizes(n: int, *configs: Any, query: bool = False, batch: int = 1) -> tuple[int, ...]:
    """Rows to trace at: the largest two multiples (of 1, 2, 3, 4 for the training rows; 1, 2 for the
    queries) of at least two of every batch that may cut that set (so every batch-sized buffer is seen
    full) below ``n``; or all ``n`` when fewer than two are.  The two largest set the slope (the fit
    reads no others): a peak set by a fixed part at small sizes (the queries' gradients) grows faster
    once the rows dominate it.
    ``query``: the query set, which any batch setting may cut (the operator count depends on the
    number of batches, not their size); the training rows: the settings not named ``query_*``."""
    batch = max([batch] + [int(v) for c in configs for k, v in knobs(c).items()
                           if "batch" in k and (query or "query" not in k) and isinstance(v, int)])
    small = max(16, 2 * batch)
    sizes = tuple(small * k for k in ((1, 2) if query else (1, 2, 3, 4)) if small * k < n)
    return sizes[-2:] if len(sizes) > 1 else (n,)


def loops(config: Any, names: tuple[str, ...] = LOOPS, prefix: str = "") -> dict[str, int]:
    """The loop counts of ``config`` (fields in ``names``) that are traced at two smaller values and
    extrapolated, keyed ``prefix + field``."""
    return {prefix + f.name: v for f in dataclasses.fields(config) if f.name in names
            and isinstance(v := getattr(config, f.name), int) and not isinstance(v, bool) and v > LOOP_LOW + 1}


def task_loops(config: Any) -> dict[str, int]:
    """The training-iteration counts of a task's ``config`` that are traced small (``TASK_LOOPS``)."""
    return loops(config, TASK_LOOPS, "task.")


def corners(counts: dict[str, int]) -> list[dict[str, int]]:
    """Every combination of (LOW, LOW + 1) for the loops named in ``counts`` (the first: all LOW)."""
    names = list(counts)
    return [dict(zip(names, values)) for values in itertools.product((LOOP_LOW, LOOP_LOW + 1), repeat=len(names))]


def loop_corners(config: Any) -> list[dict[str, int]]:
    """Every combination of (LOW, LOW + 1) for the loops of a method's ``config``."""
    return corners(loops(config))


def split_corner(corner: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """A corner's method loop counts and its task loop counts (``task.`` prefix dropped)."""
    ours = {k: v for k, v in corner.items() if not k.startswith("task.")}
    return ours, {k.removeprefix("task."): v for k, v in corner.items() if k.startswith("task.")}


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


#: Views whose task trained (or unrolled) a model during a trace: a method that does is traced at
#: row counts that fill the task's own batches too, and at small counts of the task's loops.
TRAINED: set[str] = set()


def view(task: Task, rows: int, queries: int, counts: dict[str, int] | None = None) -> Task:
    """``task`` seen with its first ``rows`` attribution rows (and the same share of its fit data),
    its first ``queries`` queries and its config's loop ``counts`` (e.g. ``{"warmup_steps": 2}``):
    same class behaviour, shared data (nothing is copied).  Its ``train`` and ``unroll`` note the
    task's name in ``TRAINED``."""
    cls, n = type(task), task.n_train
    if rows >= n and queries >= task.n_query and not counts:
        return task
    fit_rows = max(1, round(len(task.fit_data()[0]) * rows / n))

    def noted(hook: str) -> Callable[..., Any]:
        def call(self: Task, *args: Any, **kwargs: Any) -> Any:
            TRAINED.add(task.name)
            return getattr(cls, hook)(self, *args, **kwargs)
        return call
    shrunk = type(cls.__name__, (cls,), {
        "train_data": lambda self: take(cls.train_data(self), slice(rows)),
        "fit_data": lambda self: take(cls.fit_data(self), slice(fit_rows)),
        "query_data": lambda self: take(cls.query_data(self), slice(queries)),
        "train": noted("train"), "unroll": noted("unroll"), "__module__": cls.__module__})
    seen = object.__new__(shrunk)
    # the loop counts live in the view's own config; everything else (loaded data) is shared
    seen.__dict__ = dict(task.__dict__, config=dataclasses.replace(task.config, **counts)) if counts else task.__dict__
    return seen
