"""Published numbers (anchors): a peer's table as data, run as a suite and held against the records.

A ``PublishedTable`` lists ``Anchor`` rows: a task and a method at the peer's recipe (``sets``, as
``--set`` writes them), the metric and the value the peer reports, the peer's own name for the method
and why a number may differ.  ``tdabench run --suite NAME`` runs every anchor's settings (with the
table's ``board_sets`` — how this machine runs it, e.g. which data source — and the user's ``--set``);
``tdabench published NAME`` and the README's reproduction table (``tdabench board``) put each published
value next to tdabench's mean ± SE at the same settings.  Built-in tables are the files of
``published/``; third parties add theirs through the entry-point group ``tdabench.published``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from .config import parse_set_args
from .presets import Step, Suite
from .records import RunResult, summarize
from .registry import Registry


@dataclass(frozen=True)
class Anchor:
    """One published number."""

    task: str
    method: str                      # tdabench's method
    label: str                       # the peer's name for it ("IF-CG", "TRAK-10", "Grad-Cos")
    value: float
    sets: tuple[str, ...] = ()       # the peer's recipe: task., gt. and method settings (SCOPE.KEY=VALUE)
    metric: str = "lds"
    note: str = ""                   # why tdabench's number may differ (read off a figure, another data pool, …)
    uncertainty: float = 0.0         # the published value's own SE, or half the step it was read off a figure at


class PublishedTable:
    """A peer's published table (subclass it, set the class attributes, decorate with ``register_published``)."""

    name: ClassVar[str]
    source: ClassVar[str]                     # where the numbers are published
    anchors: ClassVar[tuple[Anchor, ...]]
    seeds: ClassVar[int] = 3
    board_sets: ClassVar[tuple[str, ...]] = ()  # how the board runs it here (data source, retraining seeds)

    @classmethod
    def steps(cls) -> tuple[Step, ...]:
        """One ``run`` step per distinct (task, settings), its methods those of the anchors that share them."""
        grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for a in cls.anchors:
            methods = grouped.setdefault((a.task, (*cls.board_sets, *a.sets)), [])
            if a.method not in methods:
                methods.append(a.method)
        return tuple(Step("run", task, tuple(methods), cls.seeds, sets) for (task, sets), methods in grouped.items())

    @classmethod
    def suite(cls) -> Suite:
        return Suite(cls.name, f"the settings of {cls.source} ({len(cls.anchors)} published numbers)", cls.steps())


PUBLISHED: Registry = Registry("published table", "tdabench.published", "tdabench.published")
register_published = PUBLISHED.register


def anchor_step(table: type[PublishedTable], anchor: Anchor) -> Step:
    """The suite step whose records answer ``anchor``."""
    return Step("run", anchor.task, (anchor.method,), table.seeds, (*table.board_sets, *anchor.sets))


def compare(table: type[PublishedTable], records: list[RunResult]) -> list[dict[str, Any]]:
    """Per anchor: the published value, tdabench's summary at the same settings (None when not run yet),
    and the difference in combined standard errors: tdabench's SE over seeds and the published value's
    ``uncertainty`` (its own SE where the peer gives one, the reading step of a figure otherwise)."""
    from .board_tables import matches

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
