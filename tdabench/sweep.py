"""Hyperparameter sweeps on Ray Tune with honest tuning.

The subsets and the queries of each seed's ground truth are split (seeded) into a tuning half and a
held-out half.  Trials are ranked on the tuning split only; the chosen configuration is reported on
the disjoint held-out split, so the number a sweep reports is never a best-of-grid on its own test
data.  Every trial reuses the one cached ground truth and reference model built before it starts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from . import pipeline
from .config import ConfigError, coerce_known, content_hash
from .distributed import start_ray
from .groundtruth import GroundTruth, build_ground_truth
from .lds import lds_per_query, mean_se
from .seeds import derive_seed
from .spec import Plan, RunSpec, _LazyExecutor, prepare

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


def split(n: int, seed: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded half/half split of ``range(n)``: (tuning indices, held-out indices)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, salt)))
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def split_lds(scores: torch.Tensor, truth: GroundTruth, seed: int) -> tuple[float, float]:
    """LDS on (tuning subsets × tuning queries) and on (held-out subsets × held-out queries)."""
    k_tune, k_held = split(truth.masks.shape[0], seed, 0x7E5)
    q_tune, q_held = split(scores.shape[1], seed, 0x9E5)
    out = []
    for k, q in ((k_tune, q_tune), (k_held, q_held)):
        per_query = lds_per_query(scores[:, q].float().cpu(), truth.masks[k], truth.targets[k][:, q])
        out.append(float(torch.tensor(per_query).nanmean()))
    return out[0], out[1]


def _trial(config: dict[str, str], run: RunSpec, truths: dict[int, GroundTruth]) -> dict[str, Any]:
    """One trial: the pipeline's own fit and score (timed and checked) with ``config``'s method
    settings on every seed, then the LDS on the tuning and held-out splits."""
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    overrides = {**run.overrides, run.methods[0]: {**run.overrides.get(run.methods[0], {}), **config}}
    trial = run.replace(overrides=overrides)
    plan = pipeline.prepare(trial)
    method = plan.methods[0]
    tune_lds, held_lds, seconds = [], [], []
    for seed, truth in truths.items():
        scored = pipeline.fit_and_score(method, pipeline.locked_context(trial, plan.task, method, seed))
        t, h = split_lds(scored.scores, truth, seed)
        tune_lds.append(t)
        held_lds.append(h)
        seconds.append(scored.fit.seconds + scored.score.seconds)
    return {"tune_lds": mean_se(tune_lds)[0], "heldout_lds": mean_se(held_lds)[0],
            "heldout_se": mean_se(held_lds)[1] if len(held_lds) > 1 else float("nan"), "heldout_per_seed": held_lds,
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
    if plan.gt.kind != "subsets":
        raise ConfigError(f"sweep ranks trials by LDS on split subsets: gt.kind={plan.gt.kind} is not supported; "
                          f"use gt.kind=subsets")
    for key, values in spec.grid.items():
        for value in values:
            prepare(run.replace(overrides={**run.overrides, run.methods[0]: {**run.overrides.get(run.methods[0], {}), key: value}}))
    return plan


def _build(spec: SweepSpec, plan: Plan) -> dict[int, GroundTruth]:
    """Build (or load) each seed's ground truth and reference model (on the running Ray, if any)."""
    run = spec.run
    executor = _LazyExecutor(run)
    try:
        truths = {s: build_ground_truth(plan.task, plan.gt, s, run.results_dir, executor) for s in run.seeds}
    finally:
        executor.close()
    for s in run.seeds:
        pipeline.locked_context(run, plan.task, plan.methods[0], s)     # trains and caches the reference model once
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
                       tune_config=tune.TuneConfig(metric="tune_lds", mode="max", num_samples=max(1, spec.samples)),
                       run_config=tune.RunConfig(name=f"{spec.run.task}-{spec.run.methods[0]}", storage_path=str(storage),
                                                 verbose=0))
    tune_log = report_path(spec).with_suffix(".tune.log")
    with quiet_stdout(tune_log):
        grid = tuner.fit()
    return {**_report(spec, grid, plan.methods[0]), "tune_log": str(tune_log)}


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


def typed(config: Any, values: dict[str, Any], scope: str) -> dict[str, Any]:
    """Grid values parsed as ``config``'s fields type them (``'0'`` → 0, ``'true'`` → True), JSON-ready."""
    parsed = {k: coerce_known(config, k, v, scope) if isinstance(v, str) else v for k, v in values.items()}
    return json.loads(json.dumps(parsed))


def _report(spec: SweepSpec, grid: Any, method: Any = None) -> dict[str, Any]:
    """The report of a finished Tune run (settings typed as ``method``'s config types them), written as JSON."""
    method = method or prepare(spec.run).methods[0]

    def as_set(values: dict[str, Any]) -> dict[str, Any]:
        return typed(method.config, values, method.name)

    trials = [{"config": as_set(r.config), "tune_lds": r.metrics.get("tune_lds"), "seconds": r.metrics.get("seconds")}
              for r in grid if r.error is None]
    failures = [f"{as_set(r.config)}: {type(r.error).__name__}: {r.error}" for r in grid if r.error is not None]
    if not trials:
        raise RuntimeError("every trial failed:\n" + "\n".join(failures))
    best = grid.get_best_result(metric="tune_lds", mode="max", filter_nan_and_inf=True)
    report = {"task": spec.run.task, "method": spec.run.methods[0], "seeds": list(spec.run.seeds),
              "grid": {k: [as_set({k: v})[k] for v in vs] for k, vs in spec.grid.items()}, "samples": spec.samples,
              "trials": sorted(trials, key=lambda t: -(t["tune_lds"] or -1)), "failures": failures,
              "chosen": as_set(best.config), "chosen_tune_lds": best.metrics["tune_lds"],
              "heldout_lds": best.metrics["heldout_lds"], "heldout_se": best.metrics["heldout_se"],
              "heldout_per_seed": best.metrics["heldout_per_seed"]}
    path = report_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=lambda x: None))
    report["path"] = str(path)
    return report
