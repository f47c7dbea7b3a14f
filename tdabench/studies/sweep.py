"""Hyperparameter sweeps on Ray Tune with honest tuning.

The objective follows the ground truth: for α-subsets the LDS, the subsets and the queries of each
seed's ground truth split (seeded) into a tuning half and a held-out half; for leave-one-out measured
along training (``gt.checkpoints`` ≥ 2, the stagewise study) the median over pairs (i, j) of the
correlation between the method's influence trajectory and the retrained one (002 Fig. 6), the pairs
split into halves.  Trials are ranked on the tuning split only; the chosen configuration is reported
on the disjoint held-out split, so the number a sweep reports is never a best-of-grid on its own
test data.  Every trial reuses the one cached ground truth and reference model built before it starts.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from tdabench.engine import pipeline
from tdabench.api.config import ConfigError, coerce_known, content_hash
from tdabench.engine.distributed import start_ray
from tdabench.engine.groundtruth import GroundTruth, build_ground_truth
from tdabench.toolkit.lds import mean_se
from tdabench.studies.stagewise import loo_effects, pair_correlations
from tdabench.engine.spec import Plan, RunSpec, LazyExecutor, prepare
from tdabench.engine.tuning import split, split_lds
from tdabench.plan.costplan import per_device

log = logging.getLogger("tdabench")


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: the run settings (task, one method, seeds, overrides) and the grid of method settings."""

    run: RunSpec
    grid: dict[str, tuple[str, ...]] = field(default_factory=dict)   # method key → candidate values
    samples: int = 0        # 0: the full grid; N > 0: N random draws from it


def parse_grid(items: list[str], method: str) -> dict[str, tuple[str, ...]]:
    """``["epsilon=1e-4,1e-3", "bif.nbeta=10,100"]`` → ``{"epsilon": ("1e-4", "1e-3"), ...}``."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. proj_dim=64,256)")
        key, values = item.split("=", 1)
        key = key.removeprefix(f"{method}.")
        grid[key] = tuple(v for v in values.split(",") if v)
        if not grid[key]:
            raise ConfigError(f"--grid {item!r}: gives no value for {key}; list the candidates, e.g. {key}=V1,V2")
    return grid


def objective(gt: Any) -> str:
    """What a sweep over ground truth ``gt`` ranks trials by."""
    return "pair trajectory correlation" if gt.kind == "loo" else "lds"


def _lds_split(trial: RunSpec, plan: Plan, seed: int, truth: GroundTruth) -> tuple[float, float, float]:
    """The method at the end of training: (tuning LDS, held-out LDS, seconds)."""
    method = plan.methods[0]
    scored = pipeline.fit_and_score(method, pipeline.locked_context(trial, plan.task, method, seed))
    return (*split_lds(scored.scores, truth, seed), scored.fit.seconds + scored.score.seconds)


def _trajectory_split(trial: RunSpec, plan: Plan, seed: int, truth: GroundTruth) -> tuple[float, float, float]:
    """The method at every checkpoint of the reference run: the median pair trajectory correlation on
    the tuning and the held-out pairs (a seeded half each), and the seconds of all its fits and scores."""
    method, count = plan.methods[0], plan.gt.checkpoints
    scores, seconds = [], 0.0
    for c in range(1, count + 1):
        ctx = pipeline.locked_context(trial.replace(at_checkpoint=c), plan.task, method, seed, count)
        scored = pipeline.fit_and_score(method, ctx)
        scores.append(scored.scores[truth.removed])                          # shape: [m, Q]
        seconds += scored.fit.seconds + scored.score.seconds
    r = pair_correlations(torch.stack(scores), loo_effects(truth)).flatten()  # shape: [m·Q]
    tune, held = split(r.numel(), seed, 0xC0A)
    return float(r[tune].nanmedian()), float(r[held].nanmedian()), seconds


def _trial(config: dict[str, str], run: RunSpec, truths: dict[int, GroundTruth]) -> dict[str, Any]:
    """One trial: the pipeline's own fit and score (timed and checked) with ``config``'s method
    settings on every seed, then the objective on the tuning and held-out splits."""
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    overrides = {**run.overrides, run.methods[0]: {**run.overrides.get(run.methods[0], {}), **config}}
    trial = run.replace(overrides=overrides)
    plan = pipeline.prepare(trial)
    measure = _trajectory_split if plan.gt.kind == "loo" else _lds_split
    tune, held, seconds = zip(*(measure(trial, plan, seed, truth) for seed, truth in truths.items()))
    return {"tune": mean_se(list(tune))[0], "heldout": mean_se(list(held))[0],
            "heldout_se": mean_se(list(held))[1] if len(held) > 1 else float("nan"), "heldout_per_seed": list(held),
            "seconds": float(sum(seconds) / len(seconds))}


def _trainable(config: dict[str, str], run: RunSpec, truths: dict[int, GroundTruth]) -> None:
    from ray import tune

    tune.report(_trial(config, run, truths))


def _prepare(spec: SweepSpec) -> dict[int, GroundTruth]:
    """Check every grid value (each builds its config, whose own checks run), then build (or load)
    the ground truth and the reference models, before the first trial."""
    return _build(spec, _check(spec))


def _check(spec: SweepSpec) -> Plan:
    """The run's plan, after every grid value has built its config (whose own checks run)."""
    run = spec.run
    plan = prepare(run)
    if plan.gt.kind == "loo" and plan.gt.checkpoints < 2:
        raise ConfigError(f"sweep: gt.kind=loo ranks trials by the influence trajectories of split pairs, which needs "
                          f"gt.checkpoints of at least 2 (got {plan.gt.checkpoints}); set gt.checkpoints=12, or gt.kind=subsets")
    for key, values in spec.grid.items():
        for value in values:
            prepare(run.replace(overrides={**run.overrides, run.methods[0]: {**run.overrides.get(run.methods[0], {}), key: value}}))
    _check_trials_memory(spec, plan)
    return plan


def _check_trials_memory(spec: SweepSpec, plan: Plan) -> None:
    """On CUDA, every trial's plan (each combination of the grid) with as many trials sharing a GPU as
    ``trial_resources`` lets Tune put there: a trial that would not fit stops the sweep before any work."""
    run = spec.run
    if not run.check_memory or plan.task.device.type != "cuda":
        return
    sharing = per_device(trial_resources(plan.task)["gpu"])
    name = run.methods[0]
    for combo in itertools.product(*spec.grid.values()):
        settings = dict(zip(spec.grid, combo))
        trial = run.replace(overrides={**run.overrides, name: {**run.overrides.get(name, {}), **settings}})
        pipeline.check_memory(trial, prepare(trial), sharing, f"sweep trial {settings} ({sharing} trials a GPU): ")


def _build(spec: SweepSpec, plan: Plan) -> dict[int, GroundTruth]:
    """Build (or load) each seed's ground truth and reference model (on the running Ray, if any)."""
    run = spec.run
    executor = LazyExecutor(run)
    try:
        truths = {s: build_ground_truth(plan.task, plan.gt, s, run.results_dir, executor) for s in run.seeds}
    finally:
        executor.close()
    along = plan.gt.checkpoints if plan.gt.kind == "loo" else 0
    for s in run.seeds:   # trains and caches the reference model (with its checkpoints) once
        pipeline.locked_context(run.replace(at_checkpoint=1 if along else 0), plan.task, plan.methods[0], s, along)
    return truths


def trial_resources(task: Any) -> dict[str, float]:
    """What one Tune trial reserves: a CPU, and on CUDA the task's GPU share (so trials never pile
    onto one GPU beyond what it holds)."""
    return {"cpu": 1, "gpu": task.num_gpus_per_retrain} if task.device.type == "cuda" else {"cpu": 1}


def sweep(spec: SweepSpec) -> dict[str, Any]:
    """Run the sweep on Ray Tune; return (and write) its report.  Ray Tune's own console output
    (its banner, progress tables, TensorBoard hint) goes to ``<report>.tune.log``, not to stdout."""
    import ray

    plan = _check(spec)                   # a bad setting fails before Ray starts
    started = not ray.is_initialized()
    if started:                           # once, for the ground truth's retrains and the trials alike
        start_ray(ray, spec.run.ray_address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                  logging_level="ERROR")
    try:
        return _tune(spec, plan)
    finally:
        if started:
            ray.shutdown()


def _tune(spec: SweepSpec, plan: Plan) -> dict[str, Any]:
    """Ground truth and reference models, then the trials on Ray Tune; the report."""
    from ray import tune

    truths = _build(spec, plan)
    space = {k: (tune.grid_search(list(v)) if spec.samples == 0 else tune.choice(list(v))) for k, v in spec.grid.items()}
    run = spec.run.replace(results_dir=spec.run.results_dir.resolve())  # trials chdir
    trainable = tune.with_parameters(_trainable, run=run, truths=truths)
    storage = (spec.run.results_dir / "tune").resolve()
    tuner = tune.Tuner(tune.with_resources(trainable, trial_resources(plan.task)), param_space=space,
                       tune_config=tune.TuneConfig(metric="tune", mode="max", num_samples=max(1, spec.samples)),
                       run_config=tune.RunConfig(name=f"{spec.run.task}-{spec.run.methods[0]}", storage_path=str(storage),
                                                 verbose=0))
    tune_log = report_path(spec).with_suffix(".tune.log")
    with quiet_stdout(tune_log):
        grid = tuner.fit()
    return {**_report(spec, grid, plan), "tune_log": str(tune_log)}


@contextlib.contextmanager
def quiet_stdout(path: Path) -> Iterator[None]:
    """Send what is printed on stdout (Ray Tune's console output) to the file ``path`` instead, and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("Ray Tune's own output goes to %s", path)
    with open(path, "w") as fh, contextlib.redirect_stdout(fh):
        yield


def report_path(spec: SweepSpec) -> Path:
    """Where the sweep's report is written (its Ray Tune log sits next to it)."""
    grid = {k: list(v) for k, v in spec.grid.items()}
    key = content_hash([spec.run.task, spec.run.methods, spec.run.overrides, grid, spec.samples, list(spec.run.seeds)])
    return spec.run.results_dir / "sweeps" / spec.run.task / spec.run.methods[0] / f"{key}.json"


def cause(error: BaseException) -> str:
    """``Type: message`` of what made a trial fail: Ray wraps the exception raised in the trial, with
    the worker's whole traceback in its text (a diverging sampler's message names the settings to change)."""
    inner = getattr(error, "cause", None) or error
    return f"{type(inner).__name__}: {str(inner).strip().splitlines()[-1] if str(inner).strip() else ''}"


def _descending(value: float | None) -> float:
    """Sort key: the largest value first, a missing or NaN one last."""
    return -value if value is not None and not math.isnan(value) else math.inf


def typed(config: Any, values: dict[str, Any], scope: str) -> dict[str, Any]:
    """Grid values parsed as ``config``'s fields type them (``'0'`` → 0, ``'true'`` → True), JSON-ready."""
    parsed = {k: coerce_known(config, k, v, scope) if isinstance(v, str) else v for k, v in values.items()}
    return json.loads(json.dumps(parsed))


def _report(spec: SweepSpec, grid: Any, plan: Plan | None = None) -> dict[str, Any]:
    """The report of a finished Tune run (settings typed as the method's config types them), written as JSON."""
    plan = plan or prepare(spec.run)
    method = plan.methods[0]

    def as_set(values: dict[str, Any]) -> dict[str, Any]:
        return typed(method.config, values, method.name)

    trials = [{"config": as_set(r.config), "tune": r.metrics.get("tune"), "seconds": r.metrics.get("seconds")}
              for r in grid if r.error is None]
    failures = [f"{as_set(r.config)}: {cause(r.error)}" for r in grid if r.error is not None]
    if not trials:
        raise RuntimeError("every trial failed:\n" + "\n".join(failures))
    best = grid.get_best_result(metric="tune", mode="max", filter_nan_and_inf=True)
    report = {"task": spec.run.task, "method": spec.run.methods[0], "seeds": list(spec.run.seeds),
              "objective": objective(plan.gt),
              "grid": {k: [as_set({k: v})[k] for v in vs] for k, vs in spec.grid.items()}, "samples": spec.samples,
              "trials": sorted(trials, key=lambda t: _descending(t["tune"])),
              "failures": failures, "chosen": as_set(best.config), "chosen_tune": best.metrics["tune"],
              "heldout": best.metrics["heldout"], "heldout_se": best.metrics["heldout_se"],
              "heldout_per_seed": best.metrics["heldout_per_seed"]}
    path = report_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=lambda x: None))
    report["path"] = str(path)
    return report
