"""Leaderboards from run records: one row per task × ground truth × method × config, a metric's
mean ± SE over seeds, its fraction of the noise ceiling, and the cost.

Nothing here recomputes a score: it reads ``results/runs/**/seed*.json``.  Rankings never mix
ground-truth regimes (each (task, regime) is ranked on its own), and a row whose records were made
by code that has changed since is marked stale.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from tdabench.api.config import content_hash
from tdabench.engine.records import RunResult, combined_se, summarize
from tdabench.engine.verify import is_stale
from tdabench.api.registry import METHODS, METRICS, TASKS, UnknownNameError

log = logging.getLogger("tdabench")


def load_records(results_dir: Path, task: Optional[str] = None) -> list[RunResult]:
    """Every readable record under ``results_dir/runs`` (of ``task`` only, when given); records of
    an older format are skipped with a warning that says how to renew them."""
    root = Path(results_dir) / "runs"
    out = []
    for path in sorted(root.glob(f"{task}/**/seed*.json" if task else "**/seed*.json")):
        try:
            out.append(RunResult.load(path))
        except ValueError as err:
            log.warning("skipped: %s", err)
    return out


def _settings(values: dict[str, Any], registry: Any, name: str, recommended: dict[str, Any]) -> str:
    """``k=v`` for every setting that differs from the class default; ``[task]`` marks the ones the
    task recommended (the others the user set)."""
    try:
        defaults = json.loads(json.dumps(dataclasses.asdict(registry.get(name).Config()), default=str))
    except (UnknownNameError, TypeError):
        defaults = {}
    return " ".join(f"{k}={v}" + (" [task]" if k in recommended and recommended[k] == v else "")
                    for k, v in values.items() if defaults.get(k, object()) != v)


def group(records: list[RunResult], metric: str = "lds") -> list[dict[str, Any]]:
    """Summaries over seeds of ``metric`` per (task, task config, ground truth, method, method config)."""
    groups: dict[str, list[RunResult]] = {}
    for r in records:
        if metric not in r.metrics:
            continue
        gt = {k: v for k, v in r.ground_truth.items() if k not in ("key", "code")}
        key = content_hash([r.task, r.task_version, r.task_config, gt, r.method, r.method_config])
        groups.setdefault(key, []).append(r)
    rows = []
    for runs in groups.values():
        runs.sort(key=lambda r: r.seed)
        row = summarize(runs, metric)
        row["task_settings"] = _settings(runs[0].task_config, TASKS, runs[0].task, {})
        row["method_settings"] = _settings(runs[0].method_config, METHODS, runs[0].method, runs[0].method_recommended)
        row["stale"] = any(is_stale(r, metric) for r in runs)
        rows.append(row)
    return rows


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by task, regime, then the metric; mark each method's best config; rows within one combined
    SE of a leader share its rank (``=k``).  Each (task, ground truth) is ranked on its own."""
    out: list[dict[str, Any]] = []
    for task, regime in sorted({(r["task"], r["ground_truth"]) for r in rows}):
        board = sorted((r for r in rows if (r["task"], r["ground_truth"]) == (task, regime)),
                       key=lambda r: -_num(r["mean"]))
        best: dict[str, float] = {}
        for r in board:
            best.setdefault(r["method"], _num(r["mean"]))
        leader, position = None, 0
        for i, r in enumerate(board):
            if leader is None or not _tied(leader, r):
                leader, position = r, i + 1
                r["rank"] = str(position)
            else:
                r["rank"] = f"={position}"
                leader["rank"] = f"={position}" if not leader["rank"].startswith("=") else leader["rank"]
            r["best_config"] = _num(r["mean"]) == best[r["method"]]
            out.append(r)
    return out


def _num(x: Optional[float]) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _tied(a: dict[str, Any], b: dict[str, Any]) -> bool:
    se = combined_se(a, b)
    return se > 0 and _num(a["mean"]) - _num(b["mean"]) <= se


COLUMNS = ("rank", "task", "ground truth", "method", "settings", "{metric}", "SE", "seeds", "noise ceiling",
           "of ceiling", "fit s", "score s", "peak MB")


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Display strings per row (best config per method marked with *, stale rows with (stale))."""
    def f(x: Optional[float], d: int = 3) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    out = []
    for r in rows:
        task = r["task"] + (f" ({r['task_settings']})" if r["task_settings"] else "")
        method = r["method"] + (" *" if r["best_config"] else "") + (" (stale)" if r["stale"] else "")
        out.append((r["rank"], task, r["ground_truth"], method, r["method_settings"], f(r["mean"]), f(r["se"]),
                    str(len(r["seeds"])), f(r["ceiling"]), f(r["fraction_of_ceiling"], 2),
                    f(r["fit_seconds"], 2), f(r["score_seconds"], 2), f"{r['peak_rss_mb']:.0f}"))
    return out


#: Text → LaTeX: the ten special characters, and the non-ASCII ones the board uses (pdflatex has no glyphs for them).
LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
         "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "α": r"$\alpha$", "β": r"$\beta$",
         "λ": r"$\lambda$", "±": r"$\pm$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$",
         "→": r"$\to$", "—": "---", "–": "--", "…": r"\ldots{}", "<": r"\textless{}",
         ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX that typesets it verbatim: every special character escaped, so no cell can end a row
    (``\\``), open a group or switch to math."""
    return "".join(LATEX.get(c, c) for c in text)


def _latex_row(cells: tuple[str, ...]) -> str:
    return " & ".join(latex_escape(c) for c in cells) + r" \\"


def render(rows: list[dict[str, Any]], fmt: str, metric: str = "lds") -> str:
    """The board as ``md``, ``csv``, ``latex`` or ``json``."""
    if fmt == "json":
        return json.dumps(rows, indent=1, default=lambda x: None)
    columns = tuple(c.format(metric=metric) for c in COLUMNS)
    body = table_rows(rows)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([columns, *body])
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule", _latex_row(columns), r"\midrule"]
        lines += [_latex_row(row) for row in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"
    raise ValueError(f"unknown format {fmt!r}: use md, csv, latex or json")


def leaderboard(results_dir: Path, task: Optional[str] = None, fmt: str = "md", metric: str = "lds") -> str:
    """Render the board of ``metric`` over every record under ``results_dir`` (of ``task`` only)."""
    METRICS.get(metric)   # an unknown name fails with the list
    records = load_records(results_dir, task)
    rows = rank(group(records, metric))
    if not rows:
        raise FileNotFoundError(f"no run records with metric {metric!r} under {Path(results_dir) / 'runs'}"
                                + (f" for task {task!r}" if task else "") + "; run `tdabench run` first")
    header = "" if fmt != "md" else (
        f"Leaderboard ({metric}): mean ± SE over seeds, ranked within each task and ground truth (never across "
        "regimes); `=k`: tied within one combined SE; `*`: each method's best configuration; `[task]`: a setting "
        "the task recommends (others were set by the user); `of ceiling`: the mean as a fraction of the "
        "Spearman–Brown corrected noise ceiling (empty below 2 retraining seeds, `gt.retrain_seeds`, and for a "
        "reference-order regime, whose retrains are one run reweighted, without retraining noise); `(stale)`: made "
        "by code that has changed since.\n\n")
    return header + render(rows, fmt, metric)
