"""The CI regression check: run committed task × method settings, compare with committed baselines.

A check fails when a method's LDS falls below its baseline by more than ``z`` combined standard
errors (√(SE_baseline² + SE_now²)), or when its fit + score time exceeds ``time_factor`` × the
baseline plus ``time_slack_seconds``.  Scores are recomputed every time (ground truth and reference
models come from the cache when present; the methods' own caches start empty, so fit is timed
cold).  ``--update-baselines`` rewrites the numbers on purpose.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from .config import parse_set_args
from .pipeline import evaluate
from .spec import RunSpec

DEFAULT_BASELINES = Path("results/baselines/regress.json")


def _spec(check: dict[str, Any], results_dir: Path, executor: str, scratch: Path) -> RunSpec:
    """The run of one check: scores recomputed, methods' caches empty (fit is timed cold every time),
    records written to ``scratch`` so the committed board's records stay as they are."""
    return RunSpec(task=check["task"], methods=tuple(check["methods"]), seeds=tuple(range(check["seeds"])),
                   overrides=parse_set_args(check.get("set", [])), results_dir=results_dir, device="cpu",
                   executor=executor, force=True, method_cache=scratch / "cache", records_dir=scratch / "runs")


def compare(name: str, now: dict[str, Any], base: dict[str, Any], z: float, factor: float, slack: float) -> list[str]:
    """Failure messages of one method against its baseline (empty when it passes)."""
    problems = []
    se = math.sqrt(base["lds_se"] ** 2 + _finite(now["lds_se"]) ** 2)
    floor = base["lds_mean"] - z * se
    if not now["lds_mean"] >= floor:
        problems.append(f"{name}: LDS {now['lds_mean']:.4f} is below the baseline {base['lds_mean']:.4f} "
                        f"by more than {z:g} combined SE (floor {floor:.4f})")
    seconds = now["fit_seconds"] + now["score_seconds"]
    limit = factor * base["seconds"] + slack
    if seconds > limit:
        problems.append(f"{name}: fit+score took {seconds:.2f} s, above {factor:g} x the baseline "
                        f"{base['seconds']:.2f} s + {slack:g} s")
    return problems


def _finite(x: float | None) -> float:
    return 0.0 if x is None or x != x else float(x)


def regress(baselines: Path = DEFAULT_BASELINES, results_dir: Path = Path("results"), update: bool = False,
            executor: str = "ray") -> tuple[list[str], list[str]]:
    """Run every check of ``baselines``; return (report lines, failures).  ``update`` rewrites them."""
    if not Path(baselines).exists():
        raise FileNotFoundError(f"no baseline file {baselines}; create one or pass --baselines PATH")
    spec = json.loads(Path(baselines).read_text())
    z, factor, slack = spec.get("z", 2.0), spec.get("time_factor", 4.0), spec.get("time_slack_seconds", 2.0)
    import torch

    torch.set_num_threads(spec.get("threads", 1))   # committed settings include the thread count
    report, failures = [], []
    for check in spec["checks"]:
        with tempfile.TemporaryDirectory(prefix="tdabench-regress-") as scratch:
            summaries, errors = evaluate(_spec(check, results_dir, executor, Path(scratch)))
        failures += [f"{check['task']}: {e}" for e in errors]
        stored = check.setdefault("baselines", {})
        for s in (s for s in summaries if s["metric"] == "lds"):
            name = f"{check['task']}/{s['method']}"
            now = {"lds_mean": s["mean"], "lds_se": _finite(s["se"]), "seconds": s["fit_seconds"] + s["score_seconds"]}
            if update or s["method"] not in stored:
                stored[s["method"]] = {k: round(v, 6) for k, v in now.items()}
                report.append(f"{name}: baseline written (LDS {now['lds_mean']:.4f} ± {now['lds_se']:.4f}, "
                              f"{now['seconds']:.2f} s)")
                continue
            problems = compare(name, {**now, "fit_seconds": s["fit_seconds"], "score_seconds": s["score_seconds"]},
                               stored[s["method"]], z, factor, slack)
            failures += problems
            base = stored[s["method"]]
            report.append(f"{name}: LDS {now['lds_mean']:.4f} (baseline {base['lds_mean']:.4f} ± {base['lds_se']:.4f}), "
                          f"{now['seconds']:.2f} s (baseline {base['seconds']:.2f} s) — {'FAIL' if problems else 'ok'}")
    if update or any("baseline written" in line for line in report):
        Path(baselines).write_text(json.dumps(spec, indent=1) + "\n")
    return report, failures
