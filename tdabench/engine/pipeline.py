"""The one evaluation pipeline.  ``run``, ``sweep``, ``scaling``, ``regress`` and the Python API all
go through it:

    prepare (every setting checked, before any training)
      → ground truth (cached, resumable) → reference model (cached)
      → fit_and_score (timed; shape, dtype and finite checks) → stored scores
      → metrics (plug-ins) → record

A record is reused only while it is still true: its scores were made by the current code (per-module
fingerprint) and each metric entry carries the metric's current version and code.  Otherwise the
pipeline says why and recomputes — the metrics alone, from the stored scores, when only they are stale.

This file is longer than 300 lines: it is the one pipeline, prepare to record, with the tuned rows,
the removal ground truths built after scoring and the memory check before a CUDA run; which records are
reused lives in ``reuse.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from tdabench.api.config import ConfigError, config_dict
from tdabench.plan.capacity import device_memory, refusal
from tdabench.plan.costplan import shared, trace
from tdabench.engine.fingerprint import digest, fingerprint
from tdabench.engine.groundtruth import GroundTruth, build_ground_truth, code_fingerprint
from tdabench.toolkit.labelnoise import self_influence
from tdabench.toolkit.locks import exclusive
from tdabench.toolkit.meter import Meter, Usage
from tdabench.api.method import Context, Method
from tdabench.api.metric import Metric
from tdabench.toolkit.numerics import current_numerics, watching
from tdabench.engine.records import RunResult, committed, environment, summarize
from tdabench.engine.reference import reference_key, reference_model
from tdabench.api.seeds import reference_seed
from tdabench.engine.spec import Plan, RunSpec, LazyExecutor, make_method, make_task, prepare
from tdabench.engine.store import load_scores, save_scores
from tdabench.toolkit import threads
from tdabench.api.task import Task
from tdabench.engine.tuning import choose, heldout_view, settings
from tdabench.engine.reuse import (  # noqa: F401  (scores_code, record_path: part of the pipeline's API)
    Todo, metric_entry, record_path, scores_code, stamp, triage,
)

log = logging.getLogger("tdabench")

__all__ = ["RunSpec", "Plan", "Outcome", "prepare", "evaluate", "fit_and_score", "make_context", "metric_entry"]


@dataclass
class Scored:
    """The output of one fit + score: scores ``[n_train, n_query]`` float32 and what they cost."""

    scores: torch.Tensor
    fit: Usage
    score: Usage
    extras: dict[str, Any]
    threads: Optional[threads.Choice] = None   # what fit and score ran on (CPU)
    nondeterministic: tuple[str, ...] = ()     # operations torch warned ran non-deterministically


@contextlib.contextmanager
def _method_stage(method: Method, ctx: Context) -> Iterator[tuple[Optional[threads.Choice], list[str]]]:
    """A method's fit and score: on the threads ``toolkit/threads.py`` chooses, the operations torch ran
    non-deterministically collected (and logged)."""
    with threads.chosen(None, ctx.device) as choice, watching() as nondeterministic:
        yield choice, nondeterministic
    if nondeterministic:
        log.warning("%s on %s ran operations without a deterministic implementation (%s): its numbers may differ "
                    "from run to run; the record says so", method.name, ctx.task.name, ", ".join(nondeterministic))


def fit_and_score(method: Method, ctx: Context) -> Scored:
    """Fit and score under measurement (``_method_stage``), then check the matrix (shape, dtype, finite values)."""
    with _method_stage(method, ctx) as (choice, nondeterministic):
        with Meter(ctx.device) as fit:
            method.fit(ctx)
        with Meter(ctx.device) as sc:
            scores = method.score(ctx)
    expected = (ctx.n_train, ctx.n_query)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{method.name}.score returned {got}, expected a tensor of shape {expected} [n_train, n_query]")
    if not scores.is_floating_point():
        raise TypeError(f"{method.name}.score returned dtype {scores.dtype}; scores must be floating point")
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise FloatingPointError(f"{method.name}.score returned {bad} non-finite values of {scores.numel()}; "
                                 f"check its hyperparameters (its extras say more with -v)")
    return Scored(scores.detach().float().cpu(), fit.usage, sc.usage, method.extras(), choice, tuple(nondeterministic))


def make_context(spec: RunSpec, task: Task, method: Method, seed: int, along: int = 0) -> Context:
    """The reference model (cached) and data; the method's private cache is keyed by its code.  With
    ``spec.at_checkpoint`` = c, the model is checkpoint c of the ``along`` (gt.checkpoints) evenly spaced ones."""
    if spec.at_checkpoint:   # an endpoint method on the reference run's checkpoint c of gt.checkpoints
        model, along_run, key = reference_model(task, seed, spec.results_dir, along, "even")
        model.load_state_dict(along_run[spec.at_checkpoint - 1].state)
        model, checkpoints, key = model.eval(), [], f"{key}-c{spec.at_checkpoint}of{along}"
    else:
        with threads.chosen(lambda: _size(task), task.device):   # a small model trains on one thread
            model, checkpoints, key = reference_model(task, seed, spec.results_dir, method.needs_checkpoints,
                                                     method.checkpoint_spacing)
    code = digest(fingerprint(type(method)))
    cache = (spec.method_cache or spec.results_dir / "cache") / method.name / task.name / code
    cache.mkdir(parents=True, exist_ok=True)
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=task.device, seed=seed, cache_dir=cache, checkpoints=checkpoints, model_key=key,
                   train_seed=reference_seed(seed))


_SIZES: "weakref.WeakKeyDictionary[Task, int]" = weakref.WeakKeyDictionary()


def _size(task: Task) -> int:
    """The parameters of the task's model (what the thread policy goes by), counted once per task."""
    if task not in _SIZES:
        _SIZES[task] = sum(p.numel() for p in task.make_model(reference_seed(0)).parameters())
    return _SIZES[task]


def at_checkpoint(truth: GroundTruth, c: int) -> GroundTruth:
    """The ground truth measured along training, seen at its checkpoint ``c`` (1-based)."""
    if not c:
        return truth
    if truth.trajectory is None:
        raise ValueError(f"ground truth {truth.label} was measured at the end of training only; checkpoint {c} "
                         f"needs gt.checkpoints")
    return dataclasses.replace(truth, replicas=truth.trajectory[:, :, c - 1], label=f"{truth.label} @{c}", at=c)


def locked_context(spec: RunSpec, task: Task, method: Method, seed: int, along: int = 0) -> Context:
    """``make_context`` with one process at a time training the reference model (concurrent runs,
    sweeps, stagewise and kernel studies on one results directory wait for it, then load it)."""
    models = spec.results_dir / "models" / task.name
    with exclusive(models / f"{reference_key(task, seed)}.lock", f"the reference model of {task.name} seed {seed}"):
        return make_context(spec, task, method, seed, along)


def locked_fit_and_score(method: Method, ctx: Context) -> Scored:
    """``fit_and_score`` with one process at a time writing the method's cache (factors, features)."""
    with exclusive(ctx.cache_dir.with_name(ctx.cache_dir.name + ".lock"), f"{method.name}'s cache for {ctx.task.name}"):
        return fit_and_score(method, ctx)


def _fit_and_score_exclusively(spec: RunSpec, task: Task, method: Method, seed: int, along: int) -> Scored:
    """Concurrent runs (other methods, other settings) share the reference model and a method's cache."""
    return locked_fit_and_score(method, locked_context(spec, task, method, seed, along))


def _tuned(spec: RunSpec, plan: Plan, method: Method, seed: int, truth: GroundTruth) -> Scored:
    """``method.auto``: a fit and score per grid value, the one best on the tuning half kept
    (``tuning.choose``); its seconds are the whole grid's, its extras say what was chosen from what."""
    key, grid = method.auto, type(method).tunable[method.auto]
    given = spec.overrides.get(method.name, {})

    costs: list[tuple[Usage, Usage]] = []          # the costs only: one score matrix at a time is held
    nondeterministic: set[str] = set()

    def run(value: str) -> Scored:
        trial = make_method(method.name, plan.task, {**given, key: value})
        scored = _fit_and_score_exclusively(spec, plan.task, trial, seed, plan.gt.checkpoints)
        costs.append((scored.fit, scored.score))
        nondeterministic.update(scored.nondeterministic)
        return scored

    log.info("%s on %s, seed %d: %s=auto, %d values chosen on the tuning half", method.name, plan.task.name, seed,
             key, len(grid))
    best, info = choose(key, grid, run, truth, seed)
    return Scored(best.scores, _total([c[0] for c in costs]), _total([c[1] for c in costs]),
                  {**best.extras, "auto": info}, best.threads,
                  tuple(sorted(nondeterministic)))


def _total(usages: list[Usage]) -> Usage:
    """The cost of a stage run once per grid value: summed seconds, the highest peaks."""
    cuda = [u.peak_cuda_mb for u in usages if u.peak_cuda_mb is not None]
    return Usage(sum(u.seconds for u in usages), max(u.peak_rss_mb for u in usages), max(cuda) if cuda else None,
                 usages[0].start_rss_mb)


def _score(spec: RunSpec, plan: Plan, todo: Todo, seed: int, truth: Optional[GroundTruth], executor: Any = None) -> RunResult:
    """Fit, score, store the scores, compute every metric; the new record (saved).  A tuned method
    (``KEY=auto``) is scored on every grid value and its metrics are those of the held-out half."""
    method, task = todo.method, plan.task
    log.info("%s on %s, seed %d: fit and score", method.name, task.name, seed)
    if method.auto:
        scored = _tuned(spec, plan, method, seed, truth)
    elif plan.gt.kind == "mislabel":    # the training set as its own queries: scores[i, i], shape [n_train, 1]
        ctx = locked_context(spec, task, method, seed)
        with exclusive(ctx.cache_dir.with_name(ctx.cache_dir.name + ".lock"), f"{method.name}'s cache for {task.name}"):
            with _method_stage(method, ctx) as (choice, nondeterministic):
                own, fit, score = self_influence(method, ctx)
        scored = Scored(own[:, None], fit, score, method.extras(), choice, tuple(nondeterministic))
    else:
        scored = _fit_and_score_exclusively(spec, task, method, seed, plan.gt.checkpoints)
    scores_name = todo.path.with_suffix(".scores.pt").name
    save_scores(todo.path.with_name(scores_name), scored.scores, plan.store)
    if plan.gt.after_scoring:
        truth = _removal_truth(spec, plan, todo.path.with_name(scores_name), seed, executor)
    cuda = [u.peak_cuda_mb for u in (scored.fit, scored.score) if u.peak_cuda_mb is not None]
    result = RunResult(
        task=task.name, task_version=task.version, task_config=config_dict(task.config), method=method.name,
        method_config=settings(method), seed=seed, ground_truth=_truth_entry(plan, truth),
        metrics=_metrics(plan.metrics, scored.scores, truth, seed, tuned=bool(method.auto)),
        fit_seconds=scored.fit.seconds, score_seconds=scored.score.seconds,
        peak_rss_mb=max(scored.fit.peak_rss_mb, scored.score.peak_rss_mb), peak_cuda_mb=max(cuda) if cuda else None,
        method_recommended=config_dict_of(plan.recommended[method.name]),
        method_overrides=config_dict_of(plan.overrides[method.name]), code=scores_code(type(task), type(method)),
        scores_file=scores_name, environment={**environment(str(task.device)), "numerics": current_numerics(task).key(),
                                                **_threads_used(scored), **_baseline(scored)},
        extras=scored.extras)
    result.save(todo.path)
    return result


def _baseline(scored: Scored) -> dict[str, Any]:
    """The resident memory the method's fit began from (MB): the process's data, model and libraries, what
    ``peak_rss_mb`` counts from (garbage of an earlier stage is released before it is read)."""
    start = scored.fit.start_rss_mb
    return {"rss_at_start_mb": math.floor(start * 10) / 10} if start is not None else {}   # down: never above the peak


def _threads_used(scored: Scored) -> dict[str, Any]:
    """The torch threads fit and score ran on, and why (CPU records; reproducing one pins its count), and
    any operation that ran non-deterministically although the settings asked for determinism."""
    c = scored.threads
    ops = {"nondeterministic_ops": list(scored.nondeterministic)} if scored.nondeterministic else {}
    return {**({"torch_threads": c.threads, "thread_policy": c.why} if c else {}), **ops}


def _metrics(metrics: list[Metric], scores: torch.Tensor, truth: GroundTruth, seed: int, tuned: bool,
             names: Optional[tuple[str, ...]] = None) -> dict[str, dict[str, Any]]:
    """Each metric's record entry (only ``names`` when given); a tuned method's on the held-out half."""
    if tuned:
        truth, queries = heldout_view(truth, seed)
        scores = scores[:, queries]
    return {m.name: metric_entry(m, scores, truth) for m in metrics if names is None or m.name in names}


def config_dict_of(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready settings (tuples become lists), as records hold them."""
    return json.loads(json.dumps(values, default=str))


def _truth_entry(plan: Plan, truth: GroundTruth) -> dict[str, Any]:
    where = {"at_checkpoint": truth.at} if truth.at else {}
    return {**plan.gt.settings(), **where, "label": truth.label or plan.gt.label, "key": truth.key,
            "code": digest(code_fingerprint(plan.task, plan.gt))}


def rescore_metrics(record: RunResult, path: Path, plan: Plan, names: tuple[str, ...], truth: GroundTruth) -> RunResult:
    """Recompute ``names`` from the record's stored scores (no method runs) and save the record."""
    scores, _ = load_scores(path.parent / str(record.scores_file))
    record.metrics.update(_metrics(plan.metrics, scores, truth, record.seed, bool(record.extras.get("auto")), names))
    record.ground_truth = _truth_entry(plan, truth)
    record.save(path)
    return record


@dataclass(frozen=True)
class Outcome:
    """What :func:`evaluate` did for one (method, seed): ``scored`` (fit, score, record written),
    ``metrics`` (metrics recomputed from stored scores) or ``reused`` (the stored record, as it is)."""

    method: str
    seed: int
    record: Path
    scores: Optional[Path]      # the stored score matrix; None when there is none (committed records carry none)
    action: str


def _outcome(todo: Todo, seed: int, record: RunResult) -> Outcome:
    scores = todo.path.parent / record.scores_file if record.scores_file else None
    action = "scored" if todo.rescore else "metrics" if todo.metrics else "reused"
    return Outcome(todo.method.name, seed, todo.path, scores if scores and scores.exists() else None, action)


def evaluate(spec: RunSpec, outcomes: Optional[list[Outcome]] = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every method on every seed (reusing what is still true); return per-(method, metric)
    summaries and the failures collected (one failing method does not stop the others).  ``outcomes``,
    when given, receives what was done for each (method, seed) and where its files are."""
    plan = prepare(spec)
    _guard_committed(spec, plan)
    truth_code = digest(code_fingerprint(plan.task, plan.gt))
    if spec.check_memory and plan.task.device.type == "cuda" and any(
            t.rescore or t.metrics for seed in spec.seeds for m in plan.methods
            for t in [triage(spec, plan, m, seed, truth_code)]):
        check_memory(spec, plan)
    executor = LazyExecutor(spec)
    results: dict[str, list[RunResult]] = {m.name: [] for m in plan.methods}
    failures: list[str] = []
    try:
        for seed in spec.seeds:
            todos = [triage(spec, plan, m, seed, truth_code) for m in plan.methods]
            work = [t for t in todos if t.rescore or t.metrics]
            # top-k removal is built after scoring, from each method's own stored scores (_score, _run_todo)
            early = work and not plan.gt.after_scoring
            truth = build_ground_truth(plan.task, plan.gt, seed, spec.results_dir, executor) if early else None
            truth = at_checkpoint(truth, spec.at_checkpoint) if truth is not None else None
            for todo in todos:
                try:
                    with exclusive(todo.path.with_name(todo.path.name + ".lock"), f"{todo.method.name} seed {seed}"):
                        if todo.stamp != stamp(todo.path):   # another run wrote it while we waited: look again
                            todo = triage(spec, plan, todo.method, seed, truth_code)
                        record = _run_todo(spec, plan, todo, seed, truth, executor)
                    results[todo.method.name].append(record)
                    if outcomes is not None:
                        outcomes.append(_outcome(todo, seed, record))
                except Exception as err:  # collected and reported at the end; other methods go on
                    failures.append(f"{todo.method.name} seed {seed}: {type(err).__name__}: {err}")
                    log.debug("%s", traceback.format_exc())
    finally:
        executor.close()
    summaries = [summarize(r, m.name) for m in plan.metrics for r in results.values() if r]
    return summaries, failures


def check_memory(spec: RunSpec, plan: Plan, sharing: int = 1, what: str = "") -> None:
    """On CUDA, trace every stage on fake tensors (``tdabench plan``) and stop before any work when
    one does not fit the device, naming the settings to lower (``what`` prefixes the message).
    ``sharing`` > 1: that many runs of the methods' stages share the device at once (a sweep's trials),
    so their peaks add."""
    if not spec.check_memory or plan.task.device.type != "cuda":
        return
    device = str(plan.task.device)
    log.info("planning memory on %s before any work (--no-plan skips this)", device)
    cost = trace(lambda d: make_task(spec.task, spec.overrides.get("task", {}), d), plan.methods, plan.gt,
                 device, len(spec.seeds))
    ours = tuple(f"{m.name} " for m in plan.methods)
    cost = dataclasses.replace(cost, stages=tuple(shared(s, sharing, "sharing the GPU") if s.stage.startswith(ours) else s
                                                  for s in cost.stages))
    message = refusal(cost, device_memory(device), spec.plan_unfinished == "accept")
    if message:
        raise ConfigError(what + message)



def _guard_committed(spec: RunSpec, plan: Plan) -> None:
    """``--force`` never rewrites records that git tracks (the committed board) unless asked to."""
    if not spec.force or spec.update_board:
        return
    paths = [record_path(spec, plan, m, seed) for m in plan.methods for seed in spec.seeds]
    tracked = committed(paths)
    if tracked:
        raise ConfigError(f"--force would rewrite {len(tracked)} committed record(s), e.g. {tracked[0]}; recompute into "
                          f"a directory of your own with --results-dir DIR, or pass --update-board to rewrite the "
                          f"committed board on purpose")


def _run_todo(spec: RunSpec, plan: Plan, todo: Todo, seed: int, truth: Optional[GroundTruth], executor: Any) -> RunResult:
    """Score, recompute metrics, or reuse, as triage decided."""
    if todo.rescore:
        return _score(spec, plan, todo, seed, truth, executor)
    if todo.metrics:
        if plan.gt.after_scoring:
            truth = _removal_truth(spec, plan, todo.path.parent / str(todo.record.scores_file), seed, executor)
        return rescore_metrics(todo.record, todo.path, plan, todo.metrics, truth)
    return todo.record


def _removal_truth(spec: RunSpec, plan: Plan, scores_path: Path, seed: int, executor: Any) -> GroundTruth:
    """The top-k removal ground truth of the scores stored at ``scores_path`` (as stored: what ``tdabench
    evaluate`` reads back), its missing retrains trained now."""
    stored, _ = load_scores(scores_path)
    return build_ground_truth(plan.task, plan.gt, seed, spec.results_dir, executor, scores=stored)

