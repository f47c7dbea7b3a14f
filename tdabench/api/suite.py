"""A suite's steps: the exact tasks, settings and seeds of an experiment, as data (the suites themselves
are in ``tdabench.studies.presets``; a published table is a suite too, ``tdabench.api.published``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Step:
    """One ``run`` (LDS), ``scaling`` (cost) or ``stagewise`` (over training) invocation of a suite."""

    kind: Literal["run", "scaling", "stagewise"]
    task: str
    methods: tuple[str, ...]
    seeds: int
    sets: tuple[str, ...] = ()
    vary: str = ""               # scaling only: [SCOPE.]FIELD=V1,V2,...


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    steps: tuple[Step, ...]
