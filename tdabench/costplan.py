"""The cost plan of a run: peak device memory and FLOPs of every stage, traced on fake tensors
(``tdabench.fakerun``) from the task's and methods' own code at the configured shapes, before any
real work; ``tdabench plan`` prints it and a run on CUDA refuses to start when it does not fit.

Traced on a machine with CUDA, the plan follows the GPU path (bf16 autocast, channels-last, …).
Planned for CUDA from a CPU-only machine, the CPU path is traced: code that only a GPU takes is not,
so memory is then an upper bound (float32 activations where the GPU would keep bfloat16)."""
from __future__ import annotations

import dataclasses
import gc
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

from .fakerun import OverBudget, fake_run
from .groundtruth import GroundTruthConfig
from .method import Context, Method
from .retrain import subset_masks
from .checkpoints import checkpoint_steps
from .seeds import reference_seed
from .task import Checkpoint, Task, take

GiB = 2**30


@dataclass(frozen=True)
class StageCost:
    """One stage: its peak device memory (data and model included), FLOPs, and how often it runs.
    ``peak_bytes`` is None when the stage could not be traced (``note`` says why)."""

    stage: str
    peak_bytes: Optional[int]
    flops: int = 0
    count: int = 1
    settings: str = ""     # the settings that bound this stage's memory, as `scope.key=value`
    note: str = ""
    partial: bool = False  # stopped at the operator budget: peak a lower bound, FLOPs unknown


@dataclass(frozen=True)
class CostPlan:
    """Every stage of a run, traced for ``device`` (``traced_on``: the path that was traced)."""

    task: str
    device: str
    traced_on: str
    stages: tuple[StageCost, ...]

    def over(self, memory_bytes: int) -> list[StageCost]:
        """The stages whose peak exceeds ``memory_bytes``."""
        return [s for s in self.stages if s.peak_bytes is not None and s.peak_bytes > memory_bytes]

    @property
    def total_flops(self) -> int:
        return sum(s.flops * s.count for s in self.stages)


_KNOBS = ("batch", "proj_dim", "micro", "chunk")


def _knobs(config: Any) -> dict[str, Any]:
    """The config fields that size a stage's memory (batch sizes, projection, micro-batches)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if any(k in f.name for k in _KNOBS)}


def _settings(scope: str, config: Any) -> str:
    return ", ".join(f"{scope}.{k}={v}" for k, v in _knobs(config).items())


def trace_sizes(n: int, *configs: Any, query: bool = False, batch: int = 1) -> tuple[int, ...]:
    """Rows to trace at: multiples (1, 2, 3, 4 for the training rows; 1, 2 for the queries) of at
    least two of every batch that may cut that set (so every batch-sized buffer is seen full), those
    below ``n``; or all ``n`` when fewer than two are.  The last two set the slope: a peak set by a
    fixed part at small sizes (the queries' gradients) grows faster once the rows dominate it.
    ``query``: the query set, which any batch setting may cut (the operator count depends on the
    number of batches, not their size); the training rows: the settings not named ``query_*``."""
    batch = max([batch] + [int(v) for c in configs for k, v in _knobs(c).items()
                           if "batch" in k and (query or "query" not in k) and isinstance(v, int)])
    small = max(16, 2 * batch)
    sizes = tuple(small * k for k in ((1, 2) if query else (1, 2, 3, 4)) if small * k < n)
    return sizes if len(sizes) > 1 else (n,)


class _Tracer:
    """Runs stages inside one fake run; ``raw[name] = (peak bytes, FLOPs, stopped at the budget)`` or
    the failure's note."""

    def __init__(self, live: Any, flops: Any, max_ops: int) -> None:
        self.live, self.flop_counter, self.raw, self.max_ops = live, flops, {}, max_ops

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as stage ``name``; a failure is noted (planning goes on) and gives None; a stage
        stopped at the operator budget keeps its peak so far (a lower bound) and no FLOPs."""
        gc.collect()   # what earlier stages left in reference cycles is freed before this one counts
        mark = self.live.mark()
        self.live.reset_peak()
        before = self.flop_counter.get_total_flops()
        self.live.budget = self.max_ops
        try:
            out = fn()
        except OverBudget as err:
            traceback.clear_frames(err.__traceback__)
            self.raw[name] = (self.live.peak, 0, True)
            self.live.forget_since(mark)
            return None
        except Exception as err:   # a library that cannot run on fake tensors: say so, plan the rest
            where = traceback.extract_tb(err.__traceback__)[-1]
            self.raw[name] = (f"not traceable on fake tensors: {type(err).__name__}: {str(err)[:160]} "
                              f"({Path(where.filename).name}:{where.lineno})")
            return None
        finally:
            self.live.budget = 0
        self.raw[name] = (self.live.peak, self.flop_counter.get_total_flops() - before, False)
        return out

    def completed(self, name: str) -> bool:
        """True when stage ``name`` ran to its end."""
        raw = self.raw.get(name)
        return isinstance(raw, tuple) and not raw[2]


def retrains_per_seed(gt: GroundTruthConfig, n_train: int) -> int:
    """Retrains of one ground-truth seed: the rows of ``groundtruth.make_masks`` (for leave-one-out the
    full set plus one per removed example) times the retraining seeds, without building the masks."""
    rows = 1 + min(gt.loo_examples or n_train, n_train) if gt.kind == "loo" else gt.num_subsets
    return rows * gt.retrain_seeds


def view(task: Task, rows: int, queries: int) -> Task:
    """``task`` seen with its first ``rows`` attribution rows (and the same share of its fit data)
    and first ``queries`` queries: same class behaviour, shared caches (no data is copied)."""
    cls, n = type(task), task.n_train
    if rows >= n and queries >= task.n_query:
        return task
    fit_rows = max(1, round(len(task.fit_data()[0]) * rows / n))
    shrunk = type(cls.__name__, (cls,), {
        "train_data": lambda self: take(cls.train_data(self), slice(rows)),
        "fit_data": lambda self: take(cls.fit_data(self), slice(fit_rows)),
        "query_data": lambda self: take(cls.query_data(self), slice(queries)),
        "__module__": cls.__module__})
    seen = object.__new__(shrunk)
    seen.__dict__ = task.__dict__
    return seen


def _context(task: Task, model: torch.nn.Module, checkpoints: list, cache: Path) -> Context:
    cache.mkdir(parents=True, exist_ok=True)
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=task.device, seed=0, cache_dir=cache, checkpoints=checkpoints, train_seed=reference_seed(0))


Raws = dict[tuple[int, int], Any]   # (rows, queries) traced → (peak, FLOPs, stopped) or a failure's note


def _task_stages(tracer: _Tracer, task: Task, alpha: float, rows: tuple[int, ...], queries: tuple[int, ...]) -> dict[str, Raws]:
    """A ground-truth retrain on an α-subset at each row count (the queries play no part), and the
    measurement of the queries at each query count (on an untrained model: only shapes matter)."""
    raws: dict[str, Raws] = {"retrain": {}, "measure": {}}
    for r in rows:
        seen = view(task, r, queries[0])
        with unset_fake_temporarily():   # which examples is host-side bookkeeping: real tensors
            indices = subset_masks(r, alpha, 1, 0)[0].nonzero().squeeze(1)
        model = seen.make_model(1)
        tracer.stage("retrain", lambda: seen.train(model, indices.to(task.device), 1))
        raws["retrain"][(r, queries[0])] = tracer.raw["retrain"]
        del model
    model = task.make_model(1).eval()
    for q in queries:
        seen = view(task, rows[0], q)
        tracer.stage("measure", lambda: seen.measure(model, seen.query_data()))
        raws["measure"][(rows[0], q)] = tracer.raw["measure"]
    return raws


def _untrained_reference(task: Task, n_checkpoints: int, spacing: str) -> tuple[torch.nn.Module, list[Checkpoint]]:
    """A model of the reference's shapes and ``n_checkpoints`` copies of its state, untrained: on fake
    tensors only shapes matter, and the reference run's own cost is the retrain's at α = 1."""
    model = task.make_model(reference_seed(0)).eval()
    steps = checkpoint_steps(task.total_steps(task.n_train), n_checkpoints, spacing) if n_checkpoints else ()
    points, previous = [], 0
    for step in steps:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        points.append(Checkpoint(step=step, state=state, lr=1.0, steps_since_previous=step - previous))
        previous = step
    return model, points


#: Libraries that write tensors through raw data pointers, which fake tensors do not have (a method
#: that requires one is not traced: the process could crash).
UNTRACEABLE = {"trak": "traker fills numpy memory maps through raw data pointers"}


def _method_stages(tracer: _Tracer, task: Task, method: Method, rows: tuple[int, ...], queries: tuple[int, ...],
                   cache: Path) -> dict[str, Raws]:
    """The method's fit at each row count (it is query-independent) and its score at each (rows,
    queries) pair, on a model of the reference's shapes (with its checkpoints)."""
    fit, score = f"{method.name} fit", f"{method.name} score"
    blocked = [UNTRACEABLE[lib] for lib in method.requires if lib in UNTRACEABLE]
    if blocked:
        note = f"not traced: {blocked[0]}; fake tensors have none"
        return {fit: {(rows[0], queries[0]): note}, score: {(rows[0], queries[0]): note}}
    raws: dict[str, Raws] = {fit: {}, score: {}}
    for r in rows:
        model, checkpoints = _untrained_reference(view(task, r, queries[0]), method.needs_checkpoints,
                                                  method.checkpoint_spacing)
        ctx = _context(view(task, r, queries[0]), model, checkpoints, cache / f"rows{r}")
        tracer.stage(fit, lambda: method.fit(ctx))
        raws[fit][(r, queries[0])] = tracer.raw[fit]
        for q in queries:
            if not tracer.completed(fit):
                raws[score][(r, q)] = "not traced: its fit did not finish its trace"
                continue
            ctx_q = dataclasses.replace(ctx, task=view(task, r, q), query_data=view(task, r, q).query_data())
            tracer.stage(score, lambda: method.score(ctx_q))
            raws[score][(r, q)] = tracer.raw[score]
    return raws


def _bilinear(values: dict[tuple[int, int], float], n: int, q: int) -> float:
    """c0 + c1·r + c2·s + c3·r·s through the two largest traced sizes of each (rows r, queries s), at
    (n, q): a peak set by a fixed part at small sizes grows faster later, so the last slope is the one
    to follow.  Slopes are clamped at 0 (costs do not shrink with more data); never below the largest
    traced value."""
    rs, ss = sorted({r for r, _ in values})[-2:], sorted({s for _, s in values})[-2:]
    at = lambda i, j: values[(rs[min(i, len(rs) - 1)], ss[min(j, len(ss) - 1)])]  # noqa: E731
    dr = (n - rs[-1]) / (rs[1] - rs[0]) if len(rs) > 1 else 0.0
    ds = (q - ss[-1]) / (ss[1] - ss[0]) if len(ss) > 1 else 0.0
    slope_r, slope_s = max(0.0, at(1, 1) - at(0, 1)), max(0.0, at(1, 1) - at(1, 0))
    cross = max(0.0, at(1, 1) - at(0, 1) - at(1, 0) + at(0, 0)) if len(rs) > 1 and len(ss) > 1 else 0.0
    return max(max(values.values()), at(1, 1) + slope_r * dr + slope_s * ds + cross * dr * ds)


def _extrapolate(name: str, raws: dict[tuple[int, int], Any], n: int, q: int, count: int, settings: str) -> StageCost:
    """The stage at all ``n`` rows and ``q`` queries from its traces (exact when traced at full size)."""
    note = next((r for r in raws.values() if isinstance(r, str)), "")
    if note:
        return StageCost(name, None, 0, count, settings, note)
    peak = _bilinear({k: float(v[0]) for k, v in raws.items()}, n, q)
    flops = _bilinear({k: float(v[1]) for k, v in raws.items()}, n, q)
    rows, queries = sorted({r for r, _ in raws}), sorted({s for _, s in raws})
    where = "" if rows[-1] == n and queries[-1] == q else (
        f"traced at {'/'.join(f'{r:,}' for r in rows)} of {n:,} rows and {'/'.join(f'{s:,}' for s in queries)} "
        f"of {q:,} queries, extrapolated")
    if any(v[2] for v in raws.values()):
        return StageCost(name, int(peak), 0, count, settings, "stopped at the operator budget (--trace-ops): "
                         "the peak is a lower bound (that far), the time not estimated", partial=True)
    return StageCost(name, int(peak), int(flops), count, settings, where)


#: Operators one traced stage may run (about a millisecond each on fake tensors).
TRACE_OPS = 100_000


def trace(make_task: Callable[[torch.device], Task], methods: list[Method], gt: GroundTruthConfig,
          device: str, seeds: int = 1, max_ops: int = TRACE_OPS) -> CostPlan:
    """Trace every stage of a run of ``methods`` on ``make_task(device)``'s task (CUDA planned on the
    CPU path when this machine has none)."""
    wanted = torch.device(device)
    traced = wanted if wanted.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
    _load(make_task(torch.device("cpu")))   # for real, once: data preparation and its caches are host work
    with tempfile.TemporaryDirectory() as tmp, fake_run(traced, Path(tmp)) as (live, flops):
        tracer = _Tracer(live, flops, max_ops)
        task = _load(make_task(traced), live)
        data = StageCost("data", live.current)
        n, q = task.n_train, task.n_query
        alpha = gt.alpha if gt.kind == "subsets" else 1.0
        retrains = retrains_per_seed(gt, n) * seeds
        knobs = _settings("task", task.config)
        raws = _task_stages(tracer, task, alpha, trace_sizes(n, task.config),
                            trace_sizes(q, task.config, query=True, batch=task.measure_batch_size))
        stages = [data, _extrapolate("retrain", raws["retrain"], n, q, retrains, knobs),
                  _extrapolate("measure", raws["measure"], n, q, retrains * max(1, gt.checkpoints),
                               f"measure batch {task.measure_batch_size} rows")]
        if methods:   # the reference run: a retrain on every example, once
            stages.append(dataclasses.replace(stages[1], stage="reference model", count=1,
                                              flops=int(stages[1].flops / alpha)))
        for i, m in enumerate(methods):
            sizes = trace_sizes(n, task.config, m.config), trace_sizes(q, m.config, query=True)
            got = _method_stages(tracer, task, m, *sizes, Path(tmp) / f"{i}-{m.name}")
            stages += [_extrapolate(name, got[name], n, q, seeds, _settings(m.name, m.config)) for name in got]
        return CostPlan(task.name, str(wanted), str(traced), tuple(stages))


def _load(task: Task, live: Any = None) -> Task:
    """Load the task's data; data read from a cache arrives as real tensors, counted as held."""
    batches = task.train_data(), task.query_data(), task.fit_data()
    if live is not None:
        real = {id(t): t.untyped_storage().nbytes() for b in batches for t in b if not isinstance(t, FakeTensor)}
        live.hold(sum(real.values()))
    return task
