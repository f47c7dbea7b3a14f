"""What the board's tables share: which records a suite step made, their summary, and markdown cells."""
from __future__ import annotations

import math
from typing import Any, Optional

from tdabench.api.config import apply_overrides, coerce_known, config_dict, parse_set_args
from tdabench.api.registry import METHODS, TASKS
from tdabench.api.suite import Step
from tdabench.api.truth import GroundTruthConfig, config_of
from tdabench.engine.records import RunResult, summarize


def matches(step: Step, record: RunResult) -> bool:
    """True when ``record`` is one the suite ``step`` makes (at the end of training)."""
    if record.task != step.task or record.method not in step.methods or record.ground_truth.get("at_checkpoint"):
        return False
    sets = parse_set_args(list(step.sets))
    gt = apply_overrides(GroundTruthConfig(), sets.get("gt", {}), "gt")
    if config_of(record.ground_truth).settings() != gt.settings():
        return False
    task = apply_overrides(TASKS.get(step.task).Config(), sets.get("task", {}), "task")
    if config_dict(task) != record.task_config:
        return False
    return _method_sets(record, sets.get(record.method, {}))


def _method_sets(record: RunResult, sets: dict[str, str]) -> bool:
    """The user's settings of the record are exactly the step's (parsed against the method's config)."""
    cls = METHODS.get(record.method)
    config = cls.Config()
    wanted = config_dict_values({k: v if v == "auto" and k in cls.tunable else coerce_known(config, k, v, record.method)
                                 for k, v in sets.items()})
    return record.method_overrides == wanted


def config_dict_values(values: dict[str, Any]) -> dict[str, Any]:
    """Typed settings as a record holds them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def summary(records: list[RunResult], step: Step, method: str, metric: str = "lds") -> Optional[dict[str, Any]]:
    """The summary over seeds of ``method``'s records from ``step`` (None when it has none)."""
    runs = sorted((r for r in records if r.method == method and matches(step, r)), key=lambda r: r.seed)
    return summarize(runs, metric) if runs else None


def num(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def lds(row: Optional[dict[str, Any]]) -> str:
    """``mean ± SE`` (or — when there is no row)."""
    return "—" if row is None else f"{num(row['mean'])} ± {num(row['se'])}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def task_label(step: Step) -> str:
    """The step's task with its task settings: ``mnist1d (model=cnn)``."""
    own = [x.split(".", 1)[1] for x in step.sets if x.startswith("task.")]
    return f"{step.task} ({', '.join(own)})" if own else step.task
