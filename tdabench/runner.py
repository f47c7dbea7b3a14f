"""The runner: for each seed, ground truth + reference model + each method's fit and score → LDS
→ one record per (task, method, config, seed).  Existing records are reused, not recomputed."""
from __future__ import annotations

import dataclasses
import logging
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .config import apply_overrides, config_dict, content_hash
from .distributed import Executor, RayExecutor, SerialExecutor
from .groundtruth import GroundTruth, GroundTruthConfig, build_ground_truth
from .lds import lds_per_query
from .measure import Meter
from .method import Context, Method
from .records import RunResult, environment, summarize
from .reference import reference_model
from .registry import METHODS, TASKS
from .task import Task

log = logging.getLogger("tdabench")


@dataclass(frozen=True)
class RunSpec:
    """Everything one ``tdabench run`` needs; built (and validated) before any expensive work."""

    task: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)   # scope → key → value
    results_dir: Path = Path("results")
    device: str = "auto"
    executor: str = "ray"               # "ray" or "serial"
    ray_address: Optional[str] = None
    force: bool = False                 # recompute records that exist
    method_cache: Optional[Path] = None  # methods' private state (factors, features); None: results_dir/cache
    records_dir: Optional[Path] = None   # run records; None: results_dir/runs


def pick_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


def make_task(name: str, overrides: dict[str, str], device: torch.device) -> Task:
    cls = TASKS.get(name)
    return cls(apply_overrides(cls.Config(), overrides, "task"), device=device)


def make_method(name: str, task: Task, overrides: dict[str, str]) -> Method:
    """The method with its defaults, then the task's recommended defaults, then user overrides."""
    cls = METHODS.get(name)
    missing = cls.missing_requirements()
    if missing:
        raise ImportError(f"method {name!r} needs {', '.join(missing)}, which is not installed: "
                          f"{cls.install_hint} (see the README)")
    config = dataclasses.replace(cls.Config(), **task.method_defaults(name))
    return cls(apply_overrides(config, overrides, name))


def check_writable(results_dir: Path) -> None:
    """Fail now, not after an hour of training, if results cannot be written."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / ".tdabench-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"results directory {results_dir} is not writable ({err.strerror}); "
                              f"pass --results-dir DIR with a directory you can write") from None


def gt_config(spec: RunSpec) -> GroundTruthConfig:
    return apply_overrides(GroundTruthConfig(), spec.overrides.get("gt", {}), "gt")


def validate(spec: RunSpec) -> tuple[Task, list[Method], GroundTruthConfig]:
    """Resolve names and overrides (every scope must be used) and check the results directory."""
    scopes = {"task", "gt", *spec.methods}
    unknown = set(spec.overrides) - scopes
    if unknown:
        raise ValueError(f"--set scope(s) {sorted(unknown)} match nothing; use one of {sorted(scopes)}")
    task = make_task(spec.task, spec.overrides.get("task", {}), pick_device(spec.device))
    methods = [make_method(m, task, spec.overrides.get(m, {})) for m in spec.methods]
    gt = gt_config(spec)
    check_writable(spec.results_dir)
    return task, methods, gt


def record_path(spec: RunSpec, task: Task, method: Method, gt: GroundTruthConfig, seed: int) -> Path:
    key = content_hash([task.describe(), dataclasses.asdict(gt), method.name, config_dict(method.config)])
    return (spec.records_dir or spec.results_dir / "runs") / task.name / method.name / key / f"seed{seed}.json"


def score_and_evaluate(method: Method, ctx: Context, truth: GroundTruth, task: Task, gt: GroundTruthConfig) -> RunResult:
    """Fit and score under measurement, check the score matrix, compute the LDS."""
    with Meter(ctx.device) as fit:
        method.fit(ctx)
    with Meter(ctx.device) as sc:
        scores = method.score(ctx)
    expected = (ctx.n_train, ctx.n_query)
    if tuple(scores.shape) != expected:
        raise ValueError(f"{method.name}.score returned shape {tuple(scores.shape)}, expected {expected} [n_train, n_query]")
    if not torch.isfinite(scores).all():
        raise FloatingPointError(f"{method.name}.score returned non-finite values; check its hyperparameters")
    per_query = lds_per_query(scores.detach().float().cpu(), truth.masks, truth.targets)
    cuda = [u.peak_cuda_mb for u in (fit.usage, sc.usage) if u.peak_cuda_mb is not None]
    return RunResult(
        task=task.name, task_version=task.version, task_config=config_dict(task.config), method=method.name,
        method_config=config_dict(method.config), seed=ctx.seed,
        ground_truth={"key": truth.key, **dataclasses.asdict(gt)}, lds=float(np.nanmean(per_query)),
        lds_per_query=[None if math.isnan(v) else float(v) for v in per_query],  # type: ignore[misc]
        fit_seconds=fit.usage.seconds, score_seconds=sc.usage.seconds,
        peak_rss_mb=max(fit.usage.peak_rss_mb, sc.usage.peak_rss_mb), peak_cuda_mb=max(cuda) if cuda else None,
        noise_ceiling=truth.noise_ceiling, environment=environment(str(ctx.device)), extras=method.extras())


class _LazyExecutor:
    """Starts Ray (or the serial executor) only when some retrain is actually missing."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec, self._inner = spec, None

    def run(self, task: Task, jobs: list) -> Any:
        if self._inner is None:
            self._inner = (SerialExecutor() if self.spec.executor == "serial"
                           else RayExecutor(address=self.spec.ray_address))
        return self._inner.run(task, jobs)

    def close(self) -> None:
        if isinstance(self._inner, RayExecutor):
            self._inner.close()


def run(spec: RunSpec) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every method on every seed; return per-method summaries and the failures collected."""
    task, methods, gt = validate(spec)
    executor = _LazyExecutor(spec)
    results: dict[str, list[RunResult]] = {m.name: [] for m in methods}
    failures: list[str] = []
    try:
        for seed in spec.seeds:
            todo = [m for m in methods if spec.force or not record_path(spec, task, m, gt, seed).exists()]
            for m in methods:
                if m not in todo:
                    results[m.name].append(RunResult.load(record_path(spec, task, m, gt, seed)))
            if not todo:
                continue
            truth = build_ground_truth(task, gt, seed, spec.results_dir, executor)
            for m in todo:
                try:
                    ctx = make_context(spec, task, m, seed)
                    log.info("%s on %s, seed %d: fit and score", m.name, task.name, seed)
                    result = score_and_evaluate(m, ctx, truth, task, gt)
                    result.save(record_path(spec, task, m, gt, seed))
                    results[m.name].append(result)
                except Exception as err:  # collected and reported at the end; other methods go on
                    failures.append(f"{m.name} seed {seed}: {type(err).__name__}: {err}")
                    log.debug("%s", traceback.format_exc())
    finally:
        executor.close()
    return [summarize(r) for r in results.values() if r], failures


def make_context(spec: RunSpec, task: Task, method: Method, seed: int) -> Context:
    model, checkpoints, key = reference_model(task, seed, spec.results_dir, method.needs_checkpoints,
                                             method.checkpoint_spacing)
    cache = (spec.method_cache or spec.results_dir / "cache") / method.name / task.name
    cache.mkdir(parents=True, exist_ok=True)
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=task.device, seed=seed, cache_dir=cache, checkpoints=checkpoints, model_key=key)
