"""The README's result tables, rendered from the committed records — never typed.

Each table is a named block of ``README.md`` between ``<!-- board:NAME -->`` and ``<!-- /board:NAME -->``;
``tdabench board`` rewrites the text between the markers and ``tests/test_board.py`` fails when the
README holds a figure the records do not.  A table selects its records by the suite step that made
them (the step's task, ground-truth, task and method settings), so a sweep's or a user's other rows
never leak in.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from tdabench.api.config import apply_overrides, parse_set_args
from tdabench.api.suite import Step
from tdabench.api.truth import GroundTruthConfig
from tdabench.engine.records import RunResult, combined_se, summarize
from tdabench.report import board_protocols
from tdabench.report.anchors import compare, recipe
from tdabench.report.board_common import lds, markdown_table, matches, num, summary, task_label
from tdabench.studies.presets import BREADTH, MAGIC_METHODS, NOT_RUN, SUITES


def _seconds(row: dict[str, Any]) -> str:
    total = row["fit_seconds"] + row["score_seconds"]
    return f"{total:.1f}" if total < 100 else f"{total:.0f}"


def _regime(step: Step) -> str:
    gt = apply_overrides(GroundTruthConfig(), parse_set_args(list(step.sets)).get("gt", {}), "gt")
    return f"α = {gt.alpha:g}, " + ("reference order" if gt.order == "reference" else "independent")


def _ceiling(row: Optional[dict[str, Any]], step: Step) -> str:
    if row is not None and row["ceiling"] is not None:
        return num(row["ceiling"])
    return "— (deterministic)" if "reference" in _regime(step) else "—"


def regime_grid(task: str) -> Callable[[list[RunResult]], str]:
    """004's regime table of one task: every method of the ``magic-cpu`` suite × its four regimes."""
    def render(records: list[RunResult]) -> str:
        steps = [s for s in SUITES["magic-cpu"].steps if s.task == task]
        rows = [[m] + [lds(summary(records, s, m)) for s in steps] for m in MAGIC_METHODS]
        ceilings = [_ceiling(summary(records, s, MAGIC_METHODS[-1]), s) for s in steps]
        return markdown_table([task] + [_regime(s) for s in steps], rows + [["noise ceiling"] + ceilings])
    return render


def cost_table(step_index: int, task: str = "") -> Callable[[list[RunResult]], str]:
    """One step of the ``cpu`` suite as a table: LDS, fraction of the ceiling and cost, best first.  With
    ``task``: the ``step_index``-th step of that task's default-settings runs (no breadth, no ``auto``)."""
    def render(records: list[RunResult]) -> str:
        steps = SUITES["cpu"].steps
        if task:
            steps = tuple(s for s in steps if s.task == task and len(s.methods) > 1 and not set(s.methods) <= set(BREADTH))
        step = steps[step_index]
        found = [(m, summary(records, step, m)) for m in step.methods]
        found = sorted(((m, r) for m, r in found if r is not None), key=lambda mr: -mr[1]["mean"])
        rows = [[m, lds(r), num(r["fraction_of_ceiling"], 2), num(r["fit_seconds"], 2), num(r["score_seconds"], 2),
                 f"{r['peak_rss_mb']:.0f}"] for m, r in found]
        return markdown_table(["method", "LDS", "of ceiling", "fit s", "score s", "peak MB"], rows)
    return render


def breadth(records: list[RunResult]) -> str:
    """The field's other methods on every CPU task: LDS, fit + score seconds and peak MB, best on digits first;
    a method a task cannot serve says why (``presets.NOT_RUN``)."""
    steps = [s for s in SUITES["cpu"].steps if set(s.methods) <= set(BREADTH)]
    cells: dict[str, list[str]] = {}
    for method in BREADTH:
        row: list[str] = []
        for step in steps:
            r = summary(records, step, method)
            why = NOT_RUN.get((step.task, method), "not run")
            row += [lds(r), _seconds(r), f"{r['peak_rss_mb']:.0f}"] if r else [f"— ({why})", "", ""]
        cells[method] = row
    first = {m: summary(records, steps[0], m) for m in BREADTH}
    order = sorted(BREADTH, key=lambda m: -(first[m]["mean"] if first[m] else -math.inf))
    header = ["method"] + [h for s in steps for h in (f"{s.task} LDS", "s", "MB")]
    rows = [[f"`{m}`" + _settings_note(m, steps)] + cells[m] for m in order]
    main = [s for s in SUITES["cpu"].steps if not set(s.methods) <= set(BREADTH)]
    scale = ["for scale: `ekfac` / `if` / `gradsim`"]
    for step in main:
        scale += [" / ".join(num(r["mean"]) if (r := summary(records, step, m)) else "—"
                             for m in ("ekfac", "if", "gradsim")), "", ""]
    return markdown_table(header, rows + [scale])


def _settings_note(method: str, steps: list[Step]) -> str:
    notes = [f"{s.task}: " + ", ".join(f"{k}={v}" for k, v in parse_set_args(list(s.sets)).get(method, {}).items())
             for s in steps if parse_set_args(list(s.sets)).get(method)]
    return f" ({'; '.join(notes)})" if notes else ""


def reproduction(records: list[RunResult]) -> str:
    """Every published table (``tdabench.api.published``) against the records: the peer's number, tdabench's
    mean ± SE at the same recipe, the gap in tdabench's SEs, and why the two may differ."""
    from tdabench.api.published import PUBLISHED

    return "\n\n".join(published_table(PUBLISHED.get(name), records) for name in PUBLISHED.names())


def published_cells(table: Any, records: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """One published table's header and cells (``compare``'s rows), for the README and the site alike."""
    rows = []
    for row in compare(table, records):
        a, ours, gap = row["anchor"], row["ours"], row["gap_se"]
        rows.append([f"{a.task} ({recipe(a)})", f"{a.label} (`{a.method}`)", f"{a.value:g}",
                     lds(ours) if ours else "not run yet", str(len(ours["seeds"])) if ours else "",
                     num(ours["ceiling"]) if ours else "", "" if gap is None else f"{gap:+.1f}", a.note])
    header = ["task (recipe)", f"{table.name}: method", "published", "tdabench", "seeds", "noise ceiling",
              "gap (combined SE)", "why they may differ"]
    return header, rows


def published_table(table: Any, records: list[RunResult]) -> str:
    """One published table as markdown."""
    return markdown_table(*published_cells(table, records))


def tuned(records: list[RunResult]) -> str:
    """Each default row of the ``cpu`` suite beside its tuned row (``KEY=auto``: chosen on the tuning half,
    held-out half reported), the values chosen per seed, and the gain in combined SEs, largest first."""
    steps = SUITES["cpu"].steps
    rows = []
    for step in (s for s in steps if len(s.methods) == 1 and any(x.endswith("=auto") for x in s.sets)):
        method, key = step.methods[0], next(x for x in step.sets if x.endswith("=auto")).split("=")[0].split(".")[1]
        default_sets = tuple(x for x in step.sets if not x.endswith("=auto"))
        base = next((s for s in steps if s.task == step.task and method in s.methods and s.sets == default_sets), None)
        default = summary(records, base, method) if base else None
        runs = sorted((r for r in records if r.method == method and matches(step, r)), key=lambda r: r.seed)
        tuned_row = summarize(runs, "lds") if runs else None
        chosen = "/".join(str(r.extras.get("auto", {}).get("chosen", "?")) for r in runs) or "—"
        gain = None
        if default and tuned_row:
            gain = (tuned_row["mean"] - default["mean"]) / max(combined_se(default, tuned_row), 1e-6)
        rows.append((gain if gain is not None else -math.inf, [task_label(step), f"`{method}`", lds(default),
                     lds(tuned_row), f"{key} = {chosen}", "—" if gain is None else f"{gain:+.1f}"]))
    rows.sort(key=lambda r: -r[0])
    table = markdown_table(["task", "method", "default LDS", "tuned LDS (held-out half)", "chosen per seed",
                    "gain (combined SEs)"], [r[1] for r in rows])
    top = [f"{r[1][1]} on {r[1][0]} ({r[1][5]})" for r in rows if r[0] > 2][:4]
    return table + ("\n\nLargest gains from tuning: " + ", ".join(top) + "." if top else
                    "\n\nNo tuned row beats its default by more than 2 combined SEs.")


#: Every README block by name.
BLOCKS: dict[str, Callable[[list[RunResult]], str]] = {
    "cpu-digits": cost_table(0),
    "cpu-regression": cost_table(1),
    "cpu-mnist1d-mlp": cost_table(0, "mnist1d"),
    "cpu-mnist1d-cnn": cost_table(1, "mnist1d"),
    "cpu-tinylm": cost_table(2),
    "breadth": breadth,
    "magic-digits": regime_grid("digits"),
    "magic-regression": regime_grid("regression"),
    "reproduction": reproduction,
    "tuned": tuned,
    "mislabel": board_protocols.mislabel,
    "removal": board_protocols.removal,
    "brittleness": board_protocols.brittleness,
}
