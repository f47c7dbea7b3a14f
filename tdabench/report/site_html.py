"""The HTML of the site (:mod:`tdabench.report.site`): the page, one section per task, its leaderboard table
(cells as :func:`tdabench.report.leaderboard.table_rows` writes them, each with a sort key), the filters and
each row's configuration and environment in a ``<details>``.  Every text from a record is escaped."""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from tdabench.report.leaderboard import COLUMNS, table_rows
from tdabench.report.site_assets import CSS, JS
from tdabench.report.site_plots import PLOTLY_JS

#: The numeric columns of :data:`tdabench.report.leaderboard.COLUMNS` → the row field that sorts them.
SORT_FIELDS = {"{metric}": "mean", "SE": "se", "noise ceiling": "ceiling", "of ceiling": "fraction_of_ceiling",
               "fit s": "fit_seconds", "score s": "score_seconds", "peak MB": "peak_rss_mb"}
LEGEND = ("Mean ± SE over seeds, ranked within each task, ground truth and metric (never across them); "
          "<code>=k</code>: tied within one combined SE; <code>*</code>: each method's best configuration; "
          "<code>(stale)</code>: made by code that has changed since (shown greyed); <code>of ceiling</code>: the "
          "mean as a fraction of the Spearman–Brown corrected noise ceiling. Click a column header to sort "
          "(again to reverse), open <i>details</i> for a row's configuration, environment and record files.")


def esc(value: Any) -> str:
    """``value`` as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def _number(x: Optional[float]) -> str:
    """A sort key: the number, or empty (sorted last) when it is missing."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def headers(metrics: list[str]) -> list[str]:
    """The table's column titles: the leaderboard's, with ``metric`` before the value column (named after
    the metrics shown) and ``details`` last."""
    value = " / ".join(m.upper() for m in metrics)
    out = []
    for c in COLUMNS:
        out += ["metric", value] if c == "{metric}" else [c]
    return out + ["details"]


def sort_key(column: str, row: dict[str, Any], cell: str) -> Optional[str]:
    """The numeric sort key of a numeric column's cell (empty when missing); None for a text column."""
    if column in SORT_FIELDS:
        return _number(row[SORT_FIELDS[column]])
    if column == "rank":
        return cell.lstrip("=") if cell.lstrip("=").isdigit() else ""
    return str(len(row["seeds"])) if column == "seeds" else None


def row_html(row: dict[str, Any], cells: tuple[str, ...], output: Path) -> str:
    """One ``<tr>``: the leaderboard's cells, each numeric one with its sort key, and the details cell."""
    tds = []
    for column, cell in zip(COLUMNS, cells):
        if column == "{metric}":
            tds.append(f"<td>{esc(row['metric'])}</td>")
        key = sort_key(column, row, cell)
        tds.append(f"<td>{esc(cell)}</td>" if key is None else f'<td class=num data-sort="{key}">{esc(cell)}</td>')
    tds.append(f"<td>{details(row, output)}</td>")
    classes = " ".join(c for c, on in (("stale", row["stale"]), ("best", row["best_config"])) if on)
    return (f'<tr data-regime="{esc(row["ground_truth"])}" data-metric="{esc(row["metric"])}" '
            f'class="{classes}">' + "".join(tds) + "</tr>")


def _json(value: Any) -> str:
    return f"<pre>{esc(json.dumps(value, indent=1, default=str, ensure_ascii=False))}</pre>"


def details(row: dict[str, Any], output: Path) -> str:
    """A row's configuration (task, method, ground truth) and, per seed, its record file (a relative
    link), value, cost and environment (versions, commit, device)."""
    first = row["entries"][0].record
    config = {"task": {"version": first.task_version, **first.task_config}, "method": first.method_config,
              "recommended by the task": first.method_recommended, "set by the user": first.method_overrides,
              "ground truth": {k: v for k, v in first.ground_truth.items()}}
    items = "".join(_record_item(e, row["metric"], output) for e in row["entries"])
    return (f"<details><summary>details</summary><div class=conf><h4>configuration</h4>{_json(config)}"
            f"<h4>records (one per seed)</h4><ul>{items}</ul></div></details>")


def _record_item(entry: Any, metric: str, output: Path) -> str:
    r = entry.record
    env = r.environment or {}
    link = Path(os.path.relpath(Path(entry.path).resolve(), Path(output).resolve())).as_posix()
    value = r.metrics[metric].get("value")
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    facts = [("commit", env.get("git_commit") or "— (not recorded: no git checkout)"), ("device", env.get("device")),
             ("torch threads", " — ".join(str(x) for x in (env.get("torch_threads"), env.get("thread_policy")) if x)),
             ("not deterministic", ", ".join(env.get("nondeterministic_ops") or ())),
             ("python", env.get("python")), ("platform", env.get("platform")), ("time", env.get("time")),
             ("versions", versions)]
    start = r.environment.get("rss_at_start_mb")
    cost = (f"fit {r.fit_seconds:.2f} s, score {r.score_seconds:.2f} s, peak {r.peak_rss_mb:.0f} MB"
            + (f" (from {start:.0f} MB resident at the start)" if start is not None else ""))
    return (f'<li><a href="{esc(link)}">seed {r.seed}</a>: {esc(metric)} '
            f"{'—' if value is None else f'{value:.4f}'}; {cost}<dl>"
            + "".join(f"<dt>{k}</dt><dd>{esc(v)}</dd>" for k, v in facts if v) + "</dl></li>")


def _options(values: list[str], chosen: str) -> str:
    return "".join(f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(v) or "all"}</option>'
                   for v in values)


def main_regime(rows: list[dict[str, Any]]) -> str:
    """The regime a task's board opens on: the end-of-training regime with the most rows (a regime seen at
    a checkpoint, ``… @c``, is one click away), or every regime ('') when there is only one."""
    regimes = list(dict.fromkeys(r["ground_truth"] for r in rows))
    ends = [g for g in regimes if " @" not in g] or regimes
    return max(ends, key=lambda g: sum(r["ground_truth"] == g for r in rows)) if len(regimes) > 1 else ""


def filters(rows: list[dict[str, Any]]) -> str:
    """The ground-truth and metric ``<select>``s (the ground truth starts on the main regime, the metric on
    the first one: values of two metrics are not comparable) and the count of rows shown."""
    regimes = list(dict.fromkeys(r["ground_truth"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    return ('<div class=filters><label>ground truth <select class=filter data-key=regime>'
            f'{_options(["", *regimes], main_regime(rows))}</select></label> <label>metric <select class=filter '
            f'data-key=metric>{_options(["", *metrics], metrics[0])}</select></label> <span class=count></span></div>')


def ceilings(rows: list[dict[str, Any]]) -> str:
    """The noise ceiling of each (ground truth, metric), as a list above the table."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["ground_truth"], r["metric"])
        if key not in seen or seen[key]["ceiling"] is None:
            seen[key] = r
    items = "".join(f"<li>{esc(m)}, {esc(g)}: " + (f"<b>{r['ceiling']:.3f}</b>" if r["ceiling"] is not None
                                                    else f"— ({esc(r.get('ceiling_note', ''))})") + "</li>"
                    for (g, m), r in seen.items())
    return ("<details class=ceilings open><summary>noise ceiling (Spearman–Brown corrected)</summary>"
            f"<ul>{items}</ul></details>")


def section(task: str, rows: list[dict[str, Any]], figures: list[str], output: Path) -> str:
    """One task: its noise ceilings, filters, leaderboard table and plots."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    head = "".join(f'<th scope=col title="sort by {esc(h)}">{esc(h)}</th>' for h in headers(metrics))
    body = "".join(row_html(r, cells, output) for r, cells in zip(rows, table_rows(rows)))
    plots = "".join(f"<div class=plot>{f}</div>" for f in figures)
    return (f'<section class=task id="task-{esc(task)}"><h2>{esc(task)}</h2>{ceilings(rows)}{filters(rows)}'
            f'<div class=scroll><table class=board data-task="{esc(task)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div><div class=plots>{plots}</div></section>")


def published_section(tables: list[tuple[str, str, list[str], list[list[str]]]]) -> str:
    """The peers' published numbers next to tdabench's (``board_tables.published_cells``): one table each."""
    if not tables:
        return ""
    parts = ['<section id="published"><h2>Against the peers\' published numbers</h2>']
    for name, source, header, rows in tables:
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c.replace('`', ''))}</td>" for c in row) + "</tr>" for row in rows)
        parts.append(f"<h3>{esc(name)}</h3><p class=source>{esc(source)}</p><table><thead><tr>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    return "".join(parts) + "</section>"


def page(tasks: list[str], sections: list[str], n_records: int) -> str:
    """The whole ``index.html``: styles and the sorter inline, plotly.js from the local file."""
    nav = " · ".join(f'<a href="#task-{esc(t)}">{esc(t)}</a>' for t in tasks)
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8><meta name=viewport "
            'content="width=device-width, initial-scale=1"><title>tdabench leaderboard</title>'
            f'<style>{CSS}</style><script src="{PLOTLY_JS}"></script></head><body><header>'
            f"<h1>tdabench leaderboard</h1><p class=legend>{LEGEND}</p><nav>{nav}</nav>"
            f"<p class=source>Built by <code>tdabench report</code> from {n_records} run records; nothing "
            f"was recomputed.</p></header><main>{''.join(sections)}</main><script>{JS}</script></body></html>\n")
