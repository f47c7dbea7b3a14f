"""Leaderboards from run records: one row per task × method × config, LDS mean ± SE, cost.

Nothing here recomputes a score: it reads ``results/runs/**/seed*.json`` written by the runner.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Optional

from .config import content_hash
from .records import RunResult, summarize
from .registry import METHODS, TASKS, UnknownNameError


def load_records(results_dir: Path, task: Optional[str] = None) -> list[RunResult]:
    """Every record under ``results_dir/runs`` (of ``task`` only, when given)."""
    root = Path(results_dir) / "runs"
    pattern = f"{task}/**/seed*.json" if task else "**/seed*.json"
    return [RunResult.load(p) for p in sorted(root.glob(pattern))]


def _non_default(values: dict[str, Any], registry: Any, name: str) -> str:
    """``k=v`` for every setting that differs from the registered class's default."""
    try:
        defaults = dataclasses.asdict(registry.get(name).Config())
    except (UnknownNameError, TypeError):
        defaults = {}
    defaults = json.loads(json.dumps(defaults, default=str))
    return " ".join(f"{k}={v}" for k, v in values.items() if defaults.get(k, object()) != v)


def group(records: list[RunResult]) -> list[dict[str, Any]]:
    """Summaries over seeds per (task, task config, ground truth, method, method config)."""
    groups: dict[str, list[RunResult]] = {}
    for r in records:
        gt = {k: v for k, v in r.ground_truth.items() if k != "key"}
        key = content_hash([r.task, r.task_version, r.task_config, gt, r.method, r.method_config])
        groups.setdefault(key, []).append(r)
    rows = []
    for runs in groups.values():
        runs.sort(key=lambda r: r.seed)
        row = summarize(runs)
        row["task_settings"] = _non_default(runs[0].task_config, TASKS, runs[0].task)
        row["method_settings"] = _non_default(runs[0].method_config, METHODS, runs[0].method)
        rows.append(row)
    return rows


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by task then LDS; mark each method's best config; rows within one combined SE of a
    leader share its rank (shown as ``=k``)."""
    out: list[dict[str, Any]] = []
    for task in sorted({r["task"] for r in rows}):
        board = sorted((r for r in rows if r["task"] == task), key=lambda r: -_num(r["lds_mean"]))
        best: dict[str, float] = {}
        for r in board:
            best.setdefault(r["method"], _num(r["lds_mean"]))
        leader, position = None, 0
        for i, r in enumerate(board):
            if leader is None or not _tied(leader, r):
                leader, position = r, i + 1
                r["rank"] = str(position)
            else:
                r["rank"] = f"={position}"
                leader["rank"] = f"={position}" if not leader["rank"].startswith("=") else leader["rank"]
            r["best_config"] = _num(r["lds_mean"]) == best[r["method"]]
            out.append(r)
    return out


def _num(x: Optional[float]) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _tied(a: dict[str, Any], b: dict[str, Any]) -> bool:
    se = math.sqrt(_zero(a["lds_se"]) ** 2 + _zero(b["lds_se"]) ** 2)
    return se > 0 and _num(a["lds_mean"]) - _num(b["lds_mean"]) <= se


def _zero(x: Optional[float]) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


COLUMNS = ("rank", "task", "method", "settings", "LDS", "SE", "seeds", "noise ceiling", "fit s", "score s", "peak MB")


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Display strings per row (best config per method marked with *)."""
    def f(x: Optional[float], d: int = 3) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    out = []
    for r in rows:
        task = r["task"] + (f" ({r['task_settings']})" if r["task_settings"] else "")
        method = r["method"] + (" *" if r["best_config"] else "")
        out.append((r["rank"], task, method, r["method_settings"], f(r["lds_mean"]), f(r["lds_se"]),
                    str(len(r["seeds"])), f(r.get("noise_ceiling")), f(r["fit_seconds"], 2),
                    f(r["score_seconds"], 2), f"{r['peak_rss_mb']:.0f}"))
    return out


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """The board as ``md``, ``csv``, ``latex`` or ``json``."""
    if fmt == "json":
        return json.dumps(rows, indent=1, default=lambda x: None)
    body = table_rows(rows)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([COLUMNS, *body])
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"
    if fmt == "latex":
        esc = lambda s: s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * len(COLUMNS) + "}", r"\toprule", " & ".join(COLUMNS) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"
    raise ValueError(f"unknown format {fmt!r}: use md, csv, latex or json")


def leaderboard(results_dir: Path, task: Optional[str] = None, fmt: str = "md") -> str:
    """Render the board of every record under ``results_dir`` (of ``task`` only, when given)."""
    records = load_records(results_dir, task)
    if not records:
        raise FileNotFoundError(f"no run records under {Path(results_dir) / 'runs'}"
                                + (f" for task {task!r}" if task else "") + "; run `tdabench run` first")
    rows = rank(group(records))
    header = "" if fmt != "md" else ("Leaderboard: LDS mean ± SE over seeds; `=k` marks ranks tied within one "
                                     "combined SE; `*` marks each method's best configuration.\n\n")
    return header + render(rows, fmt)
