"""``tdabench report``: a self-contained static site of the leaderboard, built from the run records.

One ``index.html`` and a local ``plotly.min.js`` next to it: nothing is fetched from the network and no
server is needed.  Per task: the leaderboard table (the rows of :mod:`tdabench.report.leaderboard`, ranked by
its :func:`~tdabench.report.leaderboard.rank`, shown as its :func:`~tdabench.report.leaderboard.table_rows` show
them: ``*`` for each method's best configuration, ``(stale)`` for rows made by code that has changed
since), sortable by any column and filterable by ground truth and metric; each row's configuration,
environment and record files on demand; an interactive metric-vs-cost plot and a per-query plot.
Nothing is recomputed: this module only reads records, and the leaderboard's functions group and rank them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tdabench.api.config import content_hash
from tdabench.report.leaderboard import group, rank
from tdabench.engine.records import RunResult
from tdabench.api.registry import METRICS

log = logging.getLogger("tdabench")

#: The metric the plots show when a task has several (the first of these that it has).
PREFERRED = ("lds", "loo")


@dataclass(frozen=True)
class Entry:
    """One record file: where it lies and what it holds."""

    path: Path
    record: RunResult


def load_entries(results_dir: Path, task: Optional[str] = None) -> list[Entry]:
    """Every readable record under ``results_dir/runs`` with its path (the files and the skip rule of
    :func:`tdabench.report.leaderboard.load_records`)."""
    root = Path(results_dir) / "runs"
    out = []
    for path in sorted(root.glob(f"{task}/**/seed*.json" if task else "**/seed*.json")):
        try:
            out.append(Entry(path, RunResult.load(path)))
        except ValueError as err:
            log.warning("skipped: %s", err)
    return out


def group_key(record: RunResult) -> str:
    """The key under which :func:`tdabench.report.leaderboard.group` pools a record's seeds into one row."""
    gt = {k: v for k, v in record.ground_truth.items() if k not in ("key", "code")}
    return content_hash([record.task, record.task_version, record.task_config, gt, record.method,
                         record.method_config])


def metrics_of(entries: list[Entry]) -> list[str]:
    """The metrics the records hold: the preferred ones first, then the registered ones, then any other."""
    found = {m for e in entries for m in e.record.metrics}
    order = [*PREFERRED, *METRICS.names()]
    return sorted(found, key=lambda m: (order.index(m) if m in order else len(order), m))


def board(entries: list[Entry], metric: str) -> list[dict[str, Any]]:
    """The leaderboard's ranked rows of ``metric``, each with ``entries``: its record files, by seed.

    Each row is made by :func:`~tdabench.report.leaderboard.group` from the records it pools (so the row is
    the leaderboard's own), and the rows are ranked by :func:`~tdabench.report.leaderboard.rank`."""
    pools: dict[str, list[Entry]] = {}
    for e in entries:
        if metric in e.record.metrics:
            pools.setdefault(group_key(e.record), []).append(e)
    rows = []
    for pool in pools.values():
        pool.sort(key=lambda e: e.record.seed)
        (row,) = group([e.record for e in pool], metric)
        row["entries"] = pool
        rows.append(row)
    return rank(rows)


def boards(entries: list[Entry]) -> dict[str, list[dict[str, Any]]]:
    """Per task, the ranked rows of every metric its records hold (metric by metric, as the leaderboard
    ranks each metric on its own)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for metric in metrics_of(entries):
        for row in board(entries, metric):
            out.setdefault(row["task"], []).append(row)
    return dict(sorted(out.items()))


def primary_metric(rows: list[dict[str, Any]]) -> str:
    """The metric a task's plots show: ``lds`` when it has it, else the first one it has."""
    found = [r["metric"] for r in rows]
    return next((m for m in PREFERRED if m in found), found[0])


def _published(entries: list[Entry], task: Optional[str]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Each published table (of ``task``, when given) that the records answer at least in part."""
    from tdabench.api.published import PUBLISHED
    from tdabench.report.board_tables import published_cells

    records = [e.record for e in entries]
    out = []
    for name in PUBLISHED.names():
        table = PUBLISHED.get(name)
        if task and all(a.task != task for a in table.anchors):
            continue
        header, rows = published_cells(table, records)
        if any(r[3] != "not run yet" for r in rows):
            out.append((name, table.source, header, rows))
    return out


def build(results_dir: Path, output: Optional[Path] = None, task: Optional[str] = None) -> Path:
    """Write the site for every task (or ``task``) to ``output`` (default ``results_dir/site``); the
    path of its ``index.html``."""
    from tdabench.report import site_html, site_plots

    output = Path(output) if output is not None else Path(results_dir) / "site"
    entries = load_entries(results_dir, task)
    tables = boards(entries)
    if not tables:
        raise FileNotFoundError(f"no run records under {Path(results_dir) / 'runs'}"
                                + (f" for task {task!r}" if task else "") + "; run `tdabench run` first")
    output.mkdir(parents=True, exist_ok=True)
    (output / site_plots.PLOTLY_JS).write_text(site_plots.plotly_js(), encoding="utf-8")
    sections = []
    for name, rows in tables.items():
        shown = [r for r in rows if r["metric"] == primary_metric(rows)]
        figures = [site_plots.figure_html(site_plots.cost_figure(shown, name), f"cost-{name}"),
                   site_plots.figure_html(site_plots.per_query_figure(shown, name), f"per-query-{name}")]
        removal = [r for r in rows if r["metric"] == "removal"]
        if removal:
            figures.append(site_plots.figure_html(site_plots.removal_figure(removal, name), f"removal-{name}"))
        sections.append(site_html.section(name, rows, figures, output))
    sections.append(site_html.published_section(_published(entries, task)))
    index = output / "index.html"
    index.write_text(site_html.page(list(tables), sections, len(entries)), encoding="utf-8")
    return index
