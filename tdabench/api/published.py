"""Published numbers (anchors): a peer's table as data, run as a suite and held against the records.

A ``PublishedTable`` lists ``Anchor`` rows: a task and a method at the peer's recipe (``sets``, as
``--set`` writes them), the metric and the value the peer reports, the peer's own name for the method
and why a number may differ.  ``tdabench run --suite NAME`` runs every anchor's settings (with the
table's ``board_sets`` — how this machine runs it, e.g. which data source — and the user's ``--set``);
the docs' reproduction table (``tdabench board``) puts each published
value next to tdabench's mean ± SE at the same settings.  Built-in tables are the files of
``published/``; third parties add theirs through the entry-point group ``tdabench.published``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tdabench.api.registry import Registry
from tdabench.api.suite import Step, Suite


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
