"""``tdabench run``: score methods on a task, or run a named suite."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import TYPE_CHECKING, Any, Optional

from tdabench.cli.options import add_common, format_table, spec_from_args
from tdabench.api.config import ConfigError
from tdabench.cli.commands.base import Command

if TYPE_CHECKING:
    from tdabench.engine.pipeline import Outcome

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", help="method name(s), comma-separated")
    p.add_argument("--suite", help="run a named suite of the papers' experiments instead (see `tdabench list`)")
    p.add_argument("--json", action="store_true", help="print only a JSON array of summaries on stdout")
    p.add_argument("--force", action="store_true", help="recompute records that already exist (not committed ones: see --update-board)")
    p.add_argument("--update-board", action="store_true",
                   help="with --force: also rewrite records that git tracks (the committed board)")


def _json_safe(obj: Any) -> Any:
    """NaN → None, recursively, so the output is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def run(args: argparse.Namespace) -> int:
    from tdabench.engine.pipeline import evaluate

    outcomes: list[Outcome] = []
    if args.suite:
        summaries, failures = run_suite(args, outcomes)
    elif not (args.task and args.method):
        raise ConfigError("run needs --task and --method (or --suite NAME)")
    else:
        methods = tuple(m for m in args.method.split(",") if m)
        if not methods:
            raise ConfigError(f"--method {args.method!r} names no method; give one or more, e.g. --method gradsim,if "
                              f"(`tdabench list` shows them)")
        summaries, failures = evaluate(spec_from_args(args, methods), outcomes)
    if args.json:
        print(json.dumps(_json_safe(summaries), indent=1))
    else:
        print(format_table(summaries))
    if lines := where_written(outcomes):   # after a blank line on stdout; on stderr with --json
        print(("" if args.json else "\n") + "\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    for failure in failures:
        log.error("failed: %s", failure)
    return 1 if failures else 0


def where_written(outcomes: list[Outcome]) -> list[str]:
    """Closing lines: per method and record folder, what was done and where its records (``seed<N>.json``)
    and score matrices (``seed<N>.scores.pt``) are; a note when stored records were shown as they are."""
    groups: dict[tuple[str, str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.method, str(o.record.parent), o.action), []).append(o)
    lines = [_where(method, folder, action, done) for (method, folder, action), done in groups.items()]
    reused = sum(o.action == "reused" for o in outcomes)
    if reused:
        lines.append(f"{reused} of {len(outcomes)} record(s) were stored ones, shown as they are: nothing was trained "
                     f"or scored for them (committed results, or an earlier run); --force recomputes them")
    return lines


_ACTIONS = {"scored": "records and score matrices written to",
            "metrics": "metrics recomputed from the stored scores; records rewritten in",
            "reused": "stored records shown as they are, from"}


def _where(method: str, folder: str, action: str, done: list[Outcome]) -> str:
    """One closing line: ``gradsim (seeds 0,1): records and score matrices written to DIR/``."""
    seeds = ",".join(str(o.seed) for o in done)
    n = sum(o.scores is not None for o in done)
    matrices = "score matrices" if n == len(done) else f"{n} of {len(done)} score matrices" if n else "no score matrices"
    where = "" if action == "scored" else f" ({matrices} there)"
    return f"{method} (seeds {seeds}): {_ACTIONS[action]} {folder}/{where}"


def run_suite(args: argparse.Namespace,
              outcomes: Optional[list[Outcome]] = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every step of a suite; a failing step is collected and the next one still runs."""
    from tdabench.engine.pipeline import evaluate
    from tdabench.studies.presets import get_suite
    from tdabench.studies.scaling import scaling_study
    from tdabench.studies.stagewise import stagewise

    suite = get_suite(args.suite)
    summaries: list[dict[str, Any]] = []
    failures: list[str] = []
    for i, step in enumerate(suite.steps, 1):
        log.info("suite %s step %d/%d: %s %s on %s", suite.name, i, len(suite.steps), step.kind,
                 ",".join(step.methods), step.task)
        ns = argparse.Namespace(**{**vars(args), "task": step.task, "seeds": str(step.seeds),
                                   "sets": [*step.sets, *args.sets]})
        try:
            if step.kind == "run":
                got, errors = evaluate(spec_from_args(ns, step.methods), outcomes)
                summaries += got
                failures += errors
            elif step.kind == "stagewise":
                report = stagewise(spec_from_args(ns, step.methods))
                summaries += [r for r in report["rows"] if r["checkpoint"] == len(report["steps"])]
                failures += report["failures"]
                log.info("stagewise report written to %s", report["json"])
            else:
                study = scaling_study(spec_from_args(ns, step.methods), step.vary)
                log.info("scaling study written to %s and %s", study["json"], study["plot"])
        except Exception as err:  # one bad step must not lose the others
            failures.append(f"step {i} ({step.task}: {','.join(step.methods)}): {type(err).__name__}: {err}")
    return summaries, failures


COMMAND = Command("run", "score methods on a task: ground truth, reference model, fit, score, LDS", run, add_arguments)
