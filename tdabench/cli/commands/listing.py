"""``tdabench list``: tasks, methods, metrics and suites with their settings and defaults."""
from __future__ import annotations

import argparse

from tdabench.api.config import field_docs, field_summary
from tdabench.api.registry import METHODS, METRICS, TASKS
from tdabench.cli.commands.base import Command


def run(_: argparse.Namespace) -> int:
    from tdabench.studies.presets import SUITES

    for title, registry in (("tasks", TASKS), ("methods", METHODS)):
        print(f"{title}:")
        for name in registry.names():
            cls = registry.get(name)
            print(f"  {name:<12} {cls.description}")
            docs = field_docs(cls.Config)
            for field, tp, default in field_summary(cls.Config):
                doc = f"  # {docs[field]}" if docs.get(field) else ""
                print(f"      {field} ({tp}) = {default!r}{doc}")
            for key, grid in getattr(cls, "tunable", {}).items():
                print(f"      {name}.{key}=auto: chosen on the tuning half from {', '.join(grid)}")
        for label, err in registry.broken.items():
            print(f"  ! {label} failed to import: {err}")
    print("which methods apply (each task at its defaults; `run` refuses the others before any work):")
    for name in TASKS.names():
        print(f"  {name:<12} {applicability(name)}")
    print("metrics (--metric NAME):")
    for name in METRICS.names():
        cls = METRICS.get(name)
        print(f"  {name:<12} v{cls.version} on ground truth of kind {', '.join(cls.kinds)}: {cls.description}")
    print("ground truth (--set gt.KEY=VALUE), scores store (--set store.KEY=VALUE):")
    from tdabench.engine.groundtruth import GroundTruthConfig
    from tdabench.engine.store import StoreConfig

    for scope, cls in (("gt", GroundTruthConfig), ("store", StoreConfig)):
        docs = field_docs(cls)
        for field, tp, default in field_summary(cls):
            print(f"      {scope}.{field} ({tp}) = {default!r}  # {docs.get(field, '')}")
    from tdabench.api.published import PUBLISHED

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


#: Errors that mean a task's data or pretrained model is not on this machine (nothing is known about the method).
MISSING = ("FileNotFoundError", "MissingResource")


def applicability(task_name: str) -> str:
    """One line: the methods that apply to ``task_name`` at its defaults, and why each other one does not
    (``Method.check``, the refusals ``run`` makes before any work)."""
    from tdabench.engine.spec import make_method

    try:
        task = TASKS.get(task_name)(TASKS.get(task_name).Config(), device="cpu")
    except Exception as err:  # a task that cannot be built here says why
        return f"cannot build it here ({type(err).__name__}: {_first(err)})"
    refused, unknown = [], []
    for method in METHODS.names():
        try:
            make_method(method, task, {}).check(task)
        except Exception as err:  # the method's own refusal, or missing data
            (unknown if type(err).__name__ in MISSING else refused).append(f"{method} ({_first(err)})")
    total = len(METHODS.names())
    if len(unknown) == total:
        return f"not known until its data or pretrained model is here ({_first(Exception(unknown[0].split(' (', 1)[1]))}"
    text = f"{total - len(refused) - len(unknown)} of {total} apply" + (f"; refused: {'; '.join(refused)}" if refused else "")
    return text + (f"; not known until its data is here: {', '.join(u.split(' ')[0] for u in unknown)}" if unknown else "")


def _first(err: Exception, width: int = 70) -> str:
    """The first clause of an error message, cut to ``width``."""
    text = str(err).splitlines()[0].split("; ")[0]
    return text if len(text) <= width else text[: width - 1] + "…"


COMMAND = Command("list", "tasks, methods and suites with their settings and defaults", run)
