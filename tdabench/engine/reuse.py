"""Which records are still true: a record is keyed by what its numbers mean (``record_path``) and reused
only while the code behind its scores (``scores_code``), its ground truth and each metric are the ones
that made it; ``triage`` says, for one (method, seed), whether to reuse the record, recompute its metrics
from the stored scores, or run the method again — and logs why."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from tdabench.api.config import content_hash
from tdabench.api.method import Method
from tdabench.api.metric import Metric
from tdabench.api.task import Task
from tdabench.api.truth import GroundTruth
from tdabench.engine import reference as reference_module
from tdabench.engine.fingerprint import changes, digest, fingerprint, same_code
from tdabench.engine.quarantine import quarantine
from tdabench.engine.records import CorruptRecord, RunResult
from tdabench.engine.spec import Plan, RunSpec
from tdabench.engine.store import load_scores
from tdabench.engine.tuning import settings
from tdabench.toolkit.numerics import current_numerics

log = logging.getLogger("tdabench")


def scores_code(task: type[Task], method: type[Method]) -> dict[str, str]:
    """The code a score matrix depends on: the method's, the task's, and the reference model's."""
    return fingerprint(method, task, reference_module)


def metric_entry(metric: Metric, scores: torch.Tensor, truth: GroundTruth) -> dict[str, Any]:
    """One metric's record entry, with its version and code digest."""
    value = metric.compute(scores, truth)
    return {"version": metric.version, "code": digest(fingerprint(type(metric))), "value": value.value,
            "ceiling": value.ceiling, "details": value.details, "per_query": value.per_query}


def stale_metrics(record: RunResult, plan: Plan, truth_code: str) -> list[str]:
    """The metrics of ``plan`` that ``record`` lacks or holds from other code or another ground truth."""
    out = []
    for m in plan.metrics:
        entry = record.metrics.get(m.name)
        if (entry is None or entry.get("version") != m.version or entry.get("code") != digest(fingerprint(type(m)))
                or record.ground_truth.get("code") != truth_code):
            out.append(m.name)
    return out


def readable_scores(path: Path) -> bool:
    """True when the stored scores at ``path`` load; an unreadable file is quarantined."""
    try:
        load_scores(path)
        return True
    except Exception:  # any unreadable file: torch's zip and pickle errors
        quarantine(path)
        return False


def record_path(spec: RunSpec, plan: Plan, method: Method, seed: int) -> Path:
    """Keyed by what the numbers mean (task, ground truth, method settings, and off the CPU the device type
    and kernel settings), not by the code: a record made by other code is found, reported and replaced
    rather than silently missed, and a record computed on another device (or with TF32, or nondeterministic
    kernels) is never taken for this run's."""
    where = [spec.at_checkpoint] if spec.at_checkpoint else []            # the end of training keeps its old keys
    numerics = current_numerics(plan.task)
    device = [numerics.key()] if numerics.device != "cpu" else []          # CPU records keep their old keys
    key = content_hash([plan.task.describe(), plan.gt.settings(), method.name, settings(method), *where, *device])
    return (spec.records_dir or spec.results_dir / "runs") / plan.task.name / method.name / key / f"seed{seed}.json"


@dataclass
class Todo:
    """What one (method, seed) needs: nothing (record reused), metrics only, or scores and metrics."""

    method: Method
    path: Path
    record: Optional[RunResult] = None     # the reusable record, when there is one
    rescore: bool = True                   # run the method
    metrics: tuple[str, ...] = ()          # metrics to (re)compute from stored scores
    stamp: Optional[int] = None            # the record file's mtime when triaged (None: no file)


def stamp(path: Path) -> Optional[int]:
    return path.stat().st_mtime_ns if path.exists() else None


def triage(spec: RunSpec, plan: Plan, method: Method, seed: int, truth_code: str) -> Todo:
    """Decide, and say, what of a record is still true."""
    todo = decide(spec, plan, method, seed, truth_code)
    todo.stamp = stamp(todo.path)
    return todo


def decide(spec: RunSpec, plan: Plan, method: Method, seed: int, truth_code: str) -> Todo:
    path = record_path(spec, plan, method, seed)
    if spec.force or not path.exists():
        return Todo(method, path)
    try:
        record = RunResult.load(path)
    except CorruptRecord as err:
        log.warning("recomputing %s seed %d: %s (moved to %s)", method.name, seed, err, quarantine(path).name)
        return Todo(method, path)
    except ValueError as err:
        log.warning("recomputing %s seed %d: %s", method.name, seed, err)
        return Todo(method, path)
    now = scores_code(type(plan.task), type(method))
    if not same_code(record.code, now):
        log.warning("recomputing %s on %s seed %d: its record was made by other code (%s)", method.name,
                    plan.task.name, seed, changes(record.code, now))
        return Todo(method, path)
    stale = stale_metrics(record, plan, truth_code)
    scores_file = path.parent / (record.scores_file or "")
    if spec.need_scores and not (record.scores_file and scores_file.exists() and readable_scores(scores_file)):
        log.info("recomputing %s seed %d: its score matrix is needed and not stored here (records are committed, "
                 "score matrices are not)", method.name, seed)
        return Todo(method, path)
    if stale and not (record.scores_file and scores_file.exists()):
        log.warning("recomputing %s seed %d: metric(s) %s are missing or stale and no stored scores exist",
                    method.name, seed, ", ".join(stale))
        return Todo(method, path)
    if stale and not readable_scores(scores_file):
        log.warning("recomputing %s seed %d: its stored scores %s are unreadable (moved aside)", method.name, seed,
                    scores_file)
        return Todo(method, path)
    if stale:
        log.info("%s seed %d: recomputing metric(s) %s from the stored scores", method.name, seed, ", ".join(stale))
    return Todo(method, path, record=record, rescore=False, metrics=tuple(stale))
