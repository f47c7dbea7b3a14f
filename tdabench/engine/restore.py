"""``tdabench evaluate``: metrics recomputed from stored scores and cached ground truth — no method
runs, nothing is retrained.  A record whose ground truth is missing or was built by other code is
reported, not guessed at."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from tdabench.api.config import with_values
from tdabench.engine.fingerprint import digest
from tdabench.engine.groundtruth import code_fingerprint, config_of, load_ground_truth
from tdabench.api.metric import Metric
from tdabench.engine.pipeline import at_checkpoint, metric_entry
from tdabench.engine.records import RunResult
from tdabench.api.registry import METRICS, TASKS
from tdabench.engine.store import load_scores

log = logging.getLogger("tdabench")


def _metrics_for(names: tuple[str, ...], kind: str) -> list[Metric]:
    chosen = names or tuple(METRICS.names())
    return [METRICS.get(n)() for n in chosen if kind in METRICS.get(n).kinds]


def reevaluate(path: Path, results_dir: Path, names: tuple[str, ...] = ()) -> tuple[RunResult, list[str]]:
    """Recompute the metrics ``names`` (default: every metric of the record's ground-truth kind) of the
    record at ``path`` from its stored scores; save it; return it and the metrics computed."""
    record = RunResult.load(path)
    if not record.scores_file or not (path.parent / record.scores_file).exists():
        raise FileNotFoundError(f"{path}: no stored scores next to the record; rerun it with `tdabench run`")
    cls = TASKS.get(record.task)
    task = cls(with_values(cls.Config, record.task_config), device="cpu")
    gt = config_of(record.ground_truth)
    scores, exact = load_scores(path.parent / record.scores_file)
    truth = at_checkpoint(load_ground_truth(task, gt, record.seed, results_dir, scores if gt.after_scoring else None),
                          record.ground_truth.get("at_checkpoint", 0))
    metrics = _metrics_for(names, gt.kind)
    for metric in metrics:
        entry = metric_entry(metric, scores, truth)
        entry["details"] = {**entry["details"], **({} if exact else {"scores": "top-k stored form"})}
        record.metrics[metric.name] = entry
    record.ground_truth = {**record.ground_truth, "key": truth.key, "code": digest(code_fingerprint(task, gt))}
    record.save(path)
    return record, [m.name for m in metrics]


def reevaluate_all(results_dir: Path, task: Optional[str], names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``reevaluate`` every record (of ``task``); (report lines, failures)."""
    root = Path(results_dir) / "runs"
    paths = sorted(root.glob(f"{task}/**/seed*.json" if task else "**/seed*.json"))
    if not paths:
        raise FileNotFoundError(f"no run records under {root}" + (f" for task {task!r}" if task else "")
                                + "; run `tdabench run` first")
    lines, failures = [], []
    for path in paths:
        try:
            record, done = reevaluate(path, results_dir, names)
        except (FileNotFoundError, ValueError) as err:
            failures.append(str(err))
            continue
        values = ", ".join(f"{n} {record.metrics[n]['value']:.4f}" for n in done) or "no metric of its kind"
        lines.append(f"{record.task}/{record.method} [{record.ground_truth.get('label', '')}] seed {record.seed}: {values}")
    return lines, failures
