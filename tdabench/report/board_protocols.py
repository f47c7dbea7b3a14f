"""The README's tables of the ``protocols`` suite (issue 35), rendered from the records like every board table
(``board_tables``, helpers in ``board_common``): top-k removal, brittleness and mislabel detection per task, each method beside its LDS on the same task
(``cpu`` suite) and the rank correlation of the two orders."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy.stats import spearmanr

from tdabench.report.board_common import lds, markdown_table, matches, num, summary, task_label
from tdabench.api.suite import Step
from tdabench.studies.presets import SUITES
from tdabench.engine.records import RunResult, summarize


def _lds_step(step: Step) -> Optional[Step]:
    """The ``cpu`` suite's default-settings step on the same task and task settings (None when there is none)."""
    own = [x for x in step.sets if x.startswith("task.")]
    return next((s for s in SUITES["cpu"].steps if s.task == step.task and len(s.methods) > 1
                 and [x for x in s.sets if x.startswith("task.")] == own), None)


def _runs(records: list[RunResult], step: Step, method: str) -> list[RunResult]:
    return sorted((r for r in records if r.method == method and matches(step, r)), key=lambda r: r.seed)


def _title(step: Step, pairs: list[tuple[float, float]]) -> str:
    agree = ""
    if len(pairs) >= 3:
        here, there = [p[0] for p in pairs], [p[1] for p in pairs]
        tie = len(set(here)) == 1 or len(set(there)) == 1          # a rank correlation is undefined then
        agree = (f" The {len(pairs)} methods tie here: no order to hold against LDS's." if tie else
                 f" Rank correlation of the methods' order here and their LDS order: ρ = {spearmanr(here, there)[0]:+.2f} "
                 f"over {len(pairs)} methods.")
    return f"**{task_label(step)}**.{agree}"


def _steps(kind: str) -> list[Step]:
    return [s for s in SUITES["protocols"].steps if f"gt.kind={kind}" in s.sets]


def _paired_gap(row: dict[str, Any], rand: dict[str, Any]) -> str:
    """The rise above random removal's, mean ± SE of the per-seed differences: a seed's two rows follow the same
    queries with the same retraining seeds, so the difference is what was removed (most of a row's own SE is
    which queries its seed follows)."""
    theirs = dict(zip(rand["seeds"], rand["per_seed"]))
    diffs = [v - theirs[s] for s, v in zip(row["seeds"], row["per_seed"]) if s in theirs and v is not None]
    if len(diffs) < 2:
        return "—"
    return f"{np.mean(diffs):+.3f} ± {np.std(diffs, ddof=1) / np.sqrt(len(diffs)):.3f}"


def mislabel(records: list[RunResult]) -> str:
    """Per task: each method's self-influence ROC-AUC, the share of flipped labels found after inspecting 10 %
    and 20 %, and its LDS on the same task."""
    parts = []
    for step in _steps("mislabel"):
        rows, pairs, base_step = [], [], _lds_step(step)
        for method in step.methods:
            runs = _runs(records, step, method)
            if not runs:
                continue
            auc = summarize(runs, "mislabel")
            found = [float(np.mean([r.metrics["mislabel"]["details"][k] for r in runs])) for k in ("found_at_10", "found_at_20")]
            base = summary(records, base_step, method) if base_step and method in base_step.methods else None
            rows.append((auc["mean"], [f"`{method}`", lds(auc), num(found[0], 2), num(found[1], 2), lds(base)]))
            if base is not None:
                pairs.append((auc["mean"], base["mean"]))
        rows.sort(key=lambda r: -r[0])
        parts.append(_title(step, pairs) + "\n\n" + markdown_table(
            ["method", "ROC-AUC", "found at 10 %", "found at 20 %", "LDS (cpu suite)"], [r[1] for r in rows]))
    return "\n\n".join(parts)


def _counterfactual(records: list[RunResult], kind: str, noun: str, extra: tuple[str, Any]) -> str:
    """Per task of the ``protocols`` suite's ``kind`` steps (top-k removal, brittleness): each method's curve over
    the removed fractions (the headline one as mean ± SE over seeds), the headline minus random's (paired by
    seed), the ``extra`` column (its header, ``{first}`` the first fraction, and a function of the seeds' details)
    and its LDS."""
    parts = []
    for step in _steps(kind):
        found: dict[str, tuple[dict[str, Any], list[RunResult]]] = {}
        for method in step.methods:
            runs = _runs(records, step, method)
            if runs:
                found[method] = (summarize(runs, kind), runs)
        if not found:
            continue
        first = found[next(iter(found))][1][0].metrics[kind]["details"]
        fractions, at = list(first["curve"]), f"{first['at_fraction']:g}"
        rand = found.get("random", (None, []))[0]
        rows, pairs, base_step = [], [], _lds_step(step)
        for method, (row, runs) in found.items():
            details = [r.metrics[kind]["details"] for r in runs]
            curve = [_mean([d["curve"][f] for d in details]) for f in fractions]
            gap = _paired_gap(row, rand) if rand is not None and method != "random" else "—"
            base = summary(records, base_step, method) if base_step and method in base_step.methods else None
            cells = [lds(row) if f == at else num(c) for f, c in zip(fractions, curve)]
            rows.append((row["mean"], [f"`{method}`", *cells, gap, extra[1](details, fractions), lds(base)]))
            if base is not None and method != "random":
                pairs.append((row["mean"], base["mean"]))
        rows.sort(key=lambda r: -r[0])
        header = ["method", *(f"{noun} at {float(f):.0%}" + (" (± SE)" if f == at else "") for f in fractions),
                  f"at {first['at_fraction']:.0%} minus random's (± SE, paired by seed)",
                  extra[0].format(first=f"{float(fractions[0]):.0%}"), "LDS (cpu suite)"]
        parts.append(_title(step, pairs) + "\n\n" + markdown_table(header, [r[1] for r in rows]))
    return "\n\n".join(parts)


def _mean(values: list[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def removal(records: list[RunResult]) -> str:
    """Per task: each method's mean loss rise of the followed queries at every k, the rise at 5 % against random
    removal's (paired by seed), the Pearson over queries of the predicted and retrained rise at 1 %, and its LDS."""
    def fit(details: list[dict[str, Any]], fractions: list[str]) -> str:
        return num(_mean([d["predicted_pearson"].get(fractions[0]) for d in details]), 2)
    return _counterfactual(records, "removal", "rise", ("predicted vs retrained, Pearson at {first}", fit))


def brittleness(records: list[RunResult]) -> str:
    """Per task: the share of the followed, correctly classified queries whose prediction flips without their
    top-k helpful examples, at every k, against random removal's (paired by seed), and its LDS."""
    def counted(details: list[dict[str, Any]], fractions: list[str]) -> str:
        return num(_mean([d["counted"] for d in details]), 1)
    return _counterfactual(records, "brittleness", "flipped", ("queries counted (correct on the full model)", counted))
