"""The cost plan of a run: peak device memory and FLOPs of every stage, traced on fake tensors
(``tdabench.plan.fakerun``) from the task's and methods' own code at the configured shapes, before any
real work; ``tdabench plan`` prints it and a run on CUDA refuses to start when it does not fit.

Traced on a machine with CUDA, the plan follows the GPU path (bf16 autocast, channels-last, …).
Planned for CUDA from a CPU-only machine, the CPU path is traced: code that only a GPU takes is not,
so memory is then an upper bound (float32 activations where the GPU would keep bfloat16).

This file is longer than 300 lines: every stage is traced inside one fake run by one tracer, and the
extrapolation from the traced sizes uses the same stage records.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

from tdabench.plan.fakerun import LiveBytes, OverBudget, fake_run
from tdabench.api.truth import GroundTruthConfig
from tdabench.api.method import Context, Method
from tdabench.toolkit.chunks import auto_chunk
from tdabench.toolkit.retrain import subset_masks, train_and_measure_many
from tdabench.toolkit.checkpoints import checkpoint_steps
from tdabench.api.seeds import reference_seed
from tdabench.api.task import Checkpoint, Task
from tdabench.plan.plansizes import (
    TRAINED, corners, knobs, loops, multilinear, split_corner, task_loops, trace_sizes, view,
)

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


def _settings(scope: str, config: Any) -> str:
    return ", ".join(f"{scope}.{k}={v}" for k, v in knobs(config).items())


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


def _context(task: Task, model: torch.nn.Module, checkpoints: list, cache: Path) -> Context:
    cache.mkdir(parents=True, exist_ok=True)
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=task.device, seed=0, cache_dir=cache, checkpoints=checkpoints, train_seed=reference_seed(0))


Raws = dict[tuple[int, int], Any]   # (rows, queries) traced → (peak, FLOPs, stopped) or a failure's note


def _task_stages(tracer: _Tracer, task: Task, alpha: float, rows: tuple[int, ...], queries: tuple[int, ...],
                 gt: GroundTruthConfig, chunk: int = 1) -> dict[str, Raws]:
    """A ground-truth retrain on an α-subset at each row count (the queries play no part) — at the
    two largest with every combination of small counts of the task's loops (``task_loops``) — and the
    measurement of the queries at each query count (on an untrained model: only shapes matter).  When
    the ground truth trains ``chunk`` > 1 runs of the reference order at once, those are traced as it calls
    them, measurement included, with 2 and 3 models ("retrain together", keyed (rows, queries, models,
    loops…)): the stacked models' memory adds up (``train_many``: ``_measured_together``)."""
    raws: dict[str, Raws] = {"retrain": {}, "measure": {}, "retrain together": {}}
    every = corners(task_loops(task.config))
    for r in rows:
        for corner in every if r in rows[-2:] else every[:1]:
            seen = view(task, r, queries[0], split_corner(corner)[1])
            with unset_fake_temporarily():   # which examples is host-side bookkeeping: real tensors
                masks = subset_masks(r, alpha, 3, 0)
            indices = masks[0].nonzero().squeeze(1)
            model = seen.make_model(1)
            tracer.stage("retrain", lambda: seen.train(model, indices.to(task.device), 1))
            raws["retrain"][(r, queries[0], *corner.values())] = tracer.raw["retrain"]
            del model
            if chunk == 1 or gt.order != "reference":
                continue
            together = view(task, r, queries[-1], split_corner(corner)[1])
            for m in (2, 3):
                tracer.stage("retrain together", lambda: train_and_measure_many(
                    together, masks[:m].to(task.device), [1] * m, gt.order))
                raws["retrain together"][(r, queries[-1], m, *corner.values())] = tracer.raw["retrain together"]
    model = task.make_model(1).eval()
    for q in queries:
        seen = view(task, rows[0], q)
        tracer.stage("measure", lambda: seen.measure(model, seen.query_data()))
        raws["measure"][(rows[0], q)] = tracer.raw["measure"]
    return raws


def _measured_together(task: Task, share: float, rows: tuple[int, ...], queries: int) -> Raws:
    """``train_many`` as the ground truth calls it, with 2 and 3 models, measured on real tensors at the
    traced sizes (keyed as ``_task_stages``): the stacked trainers draw their minibatches and group their
    runs on the host from the masks' values, which fake tensors do not have.  Tasks that train many at
    once train small models (a chunk's weights fit ``CHUNK_BYTES``), so these few short runs are cheap."""
    raws: Raws = {}
    held = sum(t.untyped_storage().nbytes() for b in (task.train_data(), task.query_data()) for t in b)
    every = corners(task_loops(task.config))
    for r in rows:
        # subsets of one size, the largest share a chunk of the ground truth's draws holds: a group steps
        # until its longest run ends (random sizes made the third model's run a batch longer than the
        # first two's, and the slope in models that batch)
        masks = torch.zeros(3, r, dtype=torch.bool)
        masks[:, : max(1, round(share * r))] = True
        for corner in every if r in rows[-2:] else every[:1]:
            seen = view(task, r, queries, split_corner(corner)[1])
            for m in (2, 3):      # one model alone may take a shorter path: the slope is 2 → 3
                live = LiveBytes(task.device, fake_only=False)
                with live:
                    train_and_measure_many(seen, masks[:m].to(task.device), list(range(1, m + 1)))
                raws[(r, queries, m, *corner.values())] = (held + live.peak, live.flops, False)
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


def _method_stages(tracer: _Tracer, task: Task, method: Method, rows: tuple[int, ...], queries: tuple[int, ...],
                   every: list[dict[str, int]], cache: Path, probe: bool = False) -> Optional[dict[str, Raws]]:
    """The method's fit at each row count (it is query-independent) and its score at each (rows,
    queries) pair, on a model of the reference's shapes (with its checkpoints); at the two largest row
    counts with every loop corner of ``every`` (method loops, and ``task.``-prefixed task loops), at
    the others with the first.  Keys: (rows, queries, the corner's counts in order).  ``probe``:
    give None as soon as a fit has trained a model (the caller then traces at the task's sizes)."""
    fit, score = f"{method.name} fit", f"{method.name} score"
    raws: dict[str, Raws] = {fit: {}, score: {}}
    for r in rows:
        for corner in every if r in rows[-2:] else every[:1]:
            ours, theirs = split_corner(corner)
            at = type(method)(dataclasses.replace(method.config, **ours)) if ours else method
            _fit_and_score(tracer, task, at, (r, *corner.values()), theirs, queries,
                           cache / f"rows{r}-{len(raws[fit])}", raws)
            if probe and task.name in TRAINED:
                return None
    return raws


def _fit_and_score(tracer: _Tracer, task: Task, method: Method, key: tuple[int, ...], counts: dict[str, int],
                   queries: tuple[int, ...], cache: Path, raws: dict[str, Raws]) -> None:
    """One fit of ``method`` on ``key[0]`` rows of ``task`` (with its loop ``counts``) and its score at
    each query count, into ``raws`` under (rows, queries, loop counts) — ``key`` is that without the
    queries."""
    fit, score = f"{method.name} fit", f"{method.name} score"
    seen = view(task, key[0], queries[0], counts)
    model, checkpoints = _untrained_reference(seen, method.needs_checkpoints, method.checkpoint_spacing)
    ctx = _context(seen, model, checkpoints, cache)
    tracer.stage(fit, lambda: method.fit(ctx))
    raws[fit][(key[0], queries[0], *key[1:])] = tracer.raw[fit]
    for q in queries:
        if not tracer.completed(fit):
            raws[score][(key[0], q, *key[1:])] = "not traced: its fit did not finish its trace"
            continue
        shown = view(task, key[0], q, counts)
        scored = lambda: method.score(dataclasses.replace(ctx, task=shown, query_data=shown.query_data()))  # noqa: E731
        if _calls_fit(method, lambda: tracer.stage(score, scored)):
            # its score used up the fit's state (TRAK's store) and fitted again: fit outside the stage, as a run does
            tracer.stage(f"{fit} again", lambda: method.fit(ctx))
            tracer.stage(score, scored)
        raws[score][(key[0], q, *key[1:])] = tracer.raw[score]


def _calls_fit(method: Method, fn: Callable[[], Any]) -> bool:
    """Run ``fn``; True when it called ``method.fit``."""
    calls: list[None] = []
    fit = method.fit

    def noted(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return fit(*args, **kwargs)
    method.fit = noted  # type: ignore[method-assign]
    try:
        fn()
    finally:
        del method.fit
    return bool(calls)


def _extrapolate(name: str, raws: dict[tuple[int, ...], Any], target: dict[str, int], count: int,
                 settings: str) -> StageCost:
    """The stage at ``target`` (rows, queries, then the configured loop counts, by name) from its
    traces (exact when traced at full size)."""
    note = next((r for r in raws.values() if isinstance(r, str)), "")
    if note:
        return StageCost(name, None, 0, count, settings, note)
    peak = multilinear({k: float(v[0]) for k, v in raws.items()}, tuple(target.values()), loop_order=2)
    flops = multilinear({k: float(v[1]) for k, v in raws.items()}, tuple(target.values()))
    traced = [sorted({k[d] for k in raws}) for d in range(len(target))]
    where = "" if all(t[-1] == want for t, want in zip(traced, target.values())) else "traced at " + ", ".join(
        f"{'/'.join(f'{v:,}' for v in t)} of {want:,} {label}"
        for t, (label, want) in zip(traced, target.items()) if t[-1] != want) + ", extrapolated"
    if any(v[2] for v in raws.values()):
        return StageCost(name, int(peak), 0, count, settings, "stopped at the operator budget (--trace-ops): "
                         "the peak is a lower bound (that far), the time not estimated", partial=True)
    return StageCost(name, int(peak), int(flops), count, settings, where)


def _method_traces(tracer: _Tracer, task: Task, method: Method, cache: Path) -> tuple[dict[str, Raws], dict[str, int]]:
    """The method's stages, and the loop counts they are extrapolated to.  Traced at row counts that
    fill the method's own batches, with the task's loops at their smallest; a method that trains a
    model (TRAK's ensemble, a replayed run) is traced again at the task's batches and loop counts
    too: a task's training is not the method's business otherwise (on Pythia, 256-sequence steps
    against GradSim's passes of 5)."""
    TRAINED.discard(task.name)
    queries = trace_sizes(task.n_query, method.config, query=True)
    ours, theirs = loops(method.config), task_loops(task.config)
    low = corners(theirs)[0]
    got = _method_stages(tracer, task, method, trace_sizes(task.n_train, method.config), queries,
                         [c | low for c in corners(ours)], cache / "own", probe=True)
    if got is not None:
        return {name: {k[:len(k) - len(low)]: v for k, v in r.items()} for name, r in got.items()}, ours
    got = _method_stages(tracer, task, method, trace_sizes(task.n_train, task.config, method.config), queries,
                         corners(ours | theirs), cache / "task")
    return got, ours | theirs


#: Operators one traced stage may run (about a millisecond each on fake tensors).
TRACE_OPS = 100_000


def trace(make_task: Callable[[torch.device], Task], methods: list[Method], gt: GroundTruthConfig,
          device: str, seeds: int = 1, max_ops: int = TRACE_OPS) -> CostPlan:
    """Trace every stage of a run of ``methods`` on ``make_task(device)``'s task (CUDA planned on the
    CPU path when this machine has none)."""
    wanted = torch.device(device)
    traced = wanted if wanted.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
    host = _load(make_task(torch.device("cpu")))   # for real, once: data preparation and its caches are host work
    chunk = auto_chunk(host, retrains_per_seed(gt, host.n_train) * seeds, 1, gt.chunk_size, gt.order,
                       gt.checkpoints)   # as the ground truth groups its retrains, with one worker: the largest
    query_sizes = trace_sizes(host.n_query, host.config, query=True, batch=host.measure_batch_size)
    alpha = gt.alpha if gt.kind == "subsets" else 1.0
    measured = {}
    if chunk > 1 and gt.order != "reference":
        sizes = subset_masks(host.n_train, alpha, min(chunk, gt.num_subsets), 0).sum(1) if gt.kind == "subsets" else None
        share = float(sizes.max()) / host.n_train if sizes is not None else alpha
        measured = _measured_together(host, share, trace_sizes(host.n_train, host.config), query_sizes[-1])
    with tempfile.TemporaryDirectory() as tmp, fake_run(traced, Path(tmp)) as (live, flops):
        tracer = _Tracer(live, flops, max_ops)
        task = _load(make_task(traced), live)
        data = StageCost("data", live.current)
        n, q = task.n_train, task.n_query
        sizes = {"rows": n, "queries": q}
        retrains = retrains_per_seed(gt, n) * seeds
        task_settings = _settings("task", task.config)
        raws = _task_stages(tracer, task, alpha, trace_sizes(n, task.config), query_sizes, gt, chunk)
        alone = _extrapolate("retrain", raws["retrain"], sizes | task_loops(task.config), retrains, task_settings)
        retrain = alone if chunk == 1 else _extrapolate(
            "retrain", measured or raws["retrain together"], sizes | {"queries": query_sizes[-1], "models": chunk}
            | task_loops(task.config), math.ceil(retrains / chunk),
            f"{task_settings}; {chunk} retrains at once (gt.chunk_size)"
            + ("; measured on real tensors at the traced sizes" if measured else ""))
        stages = [data, _sharing(retrain, task, wanted),
                  _extrapolate("measure", raws["measure"], sizes, retrains * max(1, gt.checkpoints),
                               f"measure batch {task.measure_batch_size} rows")]
        if methods:   # the reference run: a retrain on every example, once
            stages.append(dataclasses.replace(alone, stage="reference model", count=1, flops=int(alone.flops / alpha)))
        for i, m in enumerate(methods):
            got, counts = _method_traces(tracer, task, m, Path(tmp) / f"{i}-{m.name}")
            target = sizes | counts
            grid = len(type(m).tunable[m.auto]) if m.auto else 1      # KEY=auto: a fit and a score per grid value
            label = _settings(m.name, m.config) + (f"; {m.auto}=auto: × {grid} values" if m.auto else "")
            stages += [_extrapolate(name, got[name], target, seeds * grid, label) for name in got]
        return CostPlan(task.name, str(wanted), str(traced), tuple(stages))


def per_device(share: float) -> int:
    """How many runs that each ask for ``share`` of a GPU Ray (and Ray Tune) puts on one GPU at once."""
    return max(1, math.floor(1 / share + 1e-9)) if share > 0 else 1


def shared(stage: StageCost, copies: int, why: str) -> StageCost:
    """``stage`` with ``copies`` of it on the device at once: their peaks add (FLOPs and runs unchanged)."""
    if copies <= 1 or stage.peak_bytes is None:
        return stage
    return dataclasses.replace(stage, peak_bytes=stage.peak_bytes * copies, settings=f"{stage.settings}; × {copies} {why}")


def _sharing(stage: StageCost, task: Task, device: torch.device) -> StageCost:
    """On CUDA, Ray runs 1/``task.num_gpus_per_retrain`` retrains (or chunks) on each GPU at once."""
    if device.type != "cuda":
        return stage
    share = task.num_gpus_per_retrain
    return shared(stage, per_device(share), f"sharing each GPU (num_gpus_per_retrain {share:g})")


def _load(task: Task, live: Any = None) -> Task:
    """Load the task's data; data read from a cache arrives as real tensors, counted as held."""
    batches = task.train_data(), task.query_data(), task.fit_data()
    if live is not None:
        real = {id(t): t.untyped_storage().nbytes() for b in batches for t in b if not isinstance(t, FakeTensor)}
        live.hold(sum(real.values()))
    return task
