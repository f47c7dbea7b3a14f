"""A published table held against the records: per anchor, the peer's value beside tdabench's mean ± SE at
the same settings and their gap in combined standard errors (the tables themselves: ``tdabench.api.published``)."""
from __future__ import annotations

import math
from typing import Any, Optional

from tdabench.api.config import parse_set_args
from tdabench.api.published import (  # noqa: F401  (the tables' names, also under the old tdabench.anchors)
    PUBLISHED, Anchor, PublishedTable, anchor_step, register_published,
)
from tdabench.engine.records import RunResult, summarize
from tdabench.report.board_common import matches


def compare(table: type[PublishedTable], records: list[RunResult]) -> list[dict[str, Any]]:
    """Per anchor: the published value, tdabench's summary at the same settings (None when not run yet),
    and the difference in combined standard errors: tdabench's SE over seeds and the published value's
    ``uncertainty`` (its own SE where the peer gives one, the reading step of a figure otherwise)."""
    out = []
    for anchor in table.anchors:
        step = anchor_step(table, anchor)
        runs = sorted((r for r in records if r.method == anchor.method and matches(step, r)
                       and anchor.metric in r.metrics), key=lambda r: r.seed)
        ours: Optional[dict[str, Any]] = summarize(runs, anchor.metric) if runs else None
        gap = None
        if ours is not None and ours["se"] is not None and not math.isnan(ours["se"]):
            combined = math.hypot(ours["se"], anchor.uncertainty)
            gap = (ours["mean"] - anchor.value) / combined if combined else None
        out.append({"anchor": anchor, "ours": ours, "gap_se": gap})
    return out


def recipe(anchor: Anchor) -> str:
    """The anchor's settings in a table cell: ``model=lr; trak: models=10``."""
    parsed = parse_set_args(list(anchor.sets))
    parts = [", ".join(f"{k}={v}" for k, v in values.items()) if scope == "task" else
             f"{scope}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for scope, values in parsed.items()]
    return "; ".join(parts)
