"""``tdabench list``: tasks, methods, metrics and suites with their settings and defaults."""
from __future__ import annotations

import argparse

from ..config import field_docs, field_summary
from ..registry import METHODS, METRICS, TASKS
from .base import Command


def run(_: argparse.Namespace) -> int:
    from ..presets import SUITES

    for title, registry in (("tasks", TASKS), ("methods", METHODS)):
        print(f"{title}:")
        for name in registry.names():
            cls = registry.get(name)
            print(f"  {name:<12} {cls.description}")
            docs = field_docs(cls.Config)
            for field, tp, default in field_summary(cls.Config):
                doc = f"  # {docs[field]}" if docs.get(field) else ""
                print(f"      {field} ({tp}) = {default!r}{doc}")
        for label, err in registry.broken.items():
            print(f"  ! {label} failed to import: {err}")
    print("metrics (--metric NAME):")
    for name in METRICS.names():
        cls = METRICS.get(name)
        print(f"  {name:<12} v{cls.version} on ground truth of kind {', '.join(cls.kinds)}: {cls.description}")
    print("ground truth (--set gt.KEY=VALUE), scores store (--set store.KEY=VALUE):")
    from ..groundtruth import GroundTruthConfig
    from ..store import StoreConfig

    for scope, cls in (("gt", GroundTruthConfig), ("store", StoreConfig)):
        docs = field_docs(cls)
        for field, tp, default in field_summary(cls):
            print(f"      {scope}.{field} ({tp}) = {default!r}  # {docs.get(field, '')}")
    from ..anchors import PUBLISHED

    print("suites (tdabench run --suite NAME; a published table runs its peer's settings, and `tdabench board` "
          "puts its numbers next to tdabench's):")
    published = [PUBLISHED.get(name).suite() for name in PUBLISHED.names()]
    for label, err in PUBLISHED.broken.items():
        print(f"  ! {label} failed to import: {err}")
    for suite in [*SUITES.values(), *published]:
        print(f"  {suite.name:<20} {suite.description}")
        for step in suite.steps:
            extra = f" vary {step.vary}" if step.vary else ""
            print(f"      {step.kind} {step.task} [{','.join(step.methods)}] seeds={step.seeds} {' '.join(step.sets)}{extra}")
    return 0


COMMAND = Command("list", "tasks, methods and suites with their settings and defaults", run)
