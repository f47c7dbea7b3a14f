"""The CI regression check: run committed task × method settings, compare with committed baselines.

A check fails when a method's LDS falls below its baseline by more than ``z`` combined standard
errors (√(SE_baseline² + SE_now²)), or when its fit + score time exceeds ``time_factor`` × the
baseline plus ``time_slack_seconds``.  Scores are recomputed every time (ground truth and reference
models come from the cache when present; the methods' own caches start empty, so fit is timed
cold).  ``--update-baselines`` rewrites the numbers on purpose.

Time limits hold on a busy machine: a fixed small workload (``machine_seconds``: the kind of small
operators the checks run, on one thread) is timed before and after each check, and when it runs
slower than it did when the baselines were written (``calibration_seconds``), the check's time limit
is scaled by that slowdown, and the report says so.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tdabench.api.config import parse_set_args
from tdabench.engine.pipeline import evaluate
from tdabench.engine.spec import RunSpec

DEFAULT_BASELINES = Path("results/baselines/regress.json")


def _spec(check: dict[str, Any], results_dir: Path, executor: str, scratch: Path) -> RunSpec:
    """The run of one check: scores recomputed, methods' caches empty (fit is timed cold every time),
    records written to ``scratch`` so the committed board's records stay as they are."""
    return RunSpec(task=check["task"], methods=tuple(check["methods"]), seeds=tuple(range(check["seeds"])),
                   overrides=parse_set_args(check.get("set", [])), results_dir=results_dir, device="cpu",
                   executor=executor, force=True, method_cache=scratch / "cache", records_dir=scratch / "runs")


def machine_seconds(repeats: int = 5) -> float:
    """The median time of a fixed small workload: 150 Adam steps of a 64-32-10 MLP on batches of 64, one
    thread, what the checks' small models do.  Its ratio to the baselines' own says how busy the machine is."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 64, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    times = []
    try:
        for _ in range(repeats):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
            opt = torch.optim.Adam(model.parameters(), lr=0.01)
            start = time.perf_counter()
            for _ in range(150):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


def compare(name: str, now: dict[str, Any], base: dict[str, Any], z: float, factor: float, slack: float,
            slowdown: float = 1.0) -> list[str]:
    """Failure messages of one method against its baseline (empty when it passes); the time limit is
    scaled by ``slowdown`` (≥ 1: how much slower the machine runs the fixed workload than it did for the
    baselines)."""
    problems = []
    se = math.sqrt(base["lds_se"] ** 2 + _finite(now["lds_se"]) ** 2)
    floor = base["lds_mean"] - z * se
    if not now["lds_mean"] >= floor:
        problems.append(f"{name}: LDS {now['lds_mean']:.4f} is below the baseline {base['lds_mean']:.4f} "
                        f"by more than {z:g} combined SE (floor {floor:.4f})")
    seconds = now["fit_seconds"] + now["score_seconds"]
    slowdown = max(1.0, slowdown)
    limit = factor * base["seconds"] * slowdown + slack
    if seconds > limit:
        busy = f" x the machine's slowdown {slowdown:.1f}" if slowdown > 1 else ""
        problems.append(f"{name}: fit+score took {seconds:.2f} s, above {factor:g} x the baseline "
                        f"{base['seconds']:.2f} s{busy} + {slack:g} s")
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
    if update or "calibration_seconds" not in spec:
        spec["calibration_seconds"] = round(machine_seconds(), 6)
        report.append(f"machine calibration written: {spec['calibration_seconds']:.3f} s for the fixed workload")
    for check in spec["checks"]:
        before = machine_seconds()
        with tempfile.TemporaryDirectory(prefix="tdabench-regress-") as scratch:
            summaries, errors = evaluate(_spec(check, results_dir, executor, Path(scratch)))
        slowdown = max(before, machine_seconds()) / spec["calibration_seconds"]
        if slowdown > 1.2:
            report.append(f"{check['task']}: the machine ran the fixed workload {slowdown:.1f}x slower than when the "
                          f"baselines were written (busy): its time limits are scaled by that")
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
                               stored[s["method"]], z, factor, slack, slowdown)
            failures += problems
            base = stored[s["method"]]
            report.append(f"{name}: LDS {now['lds_mean']:.4f} (baseline {base['lds_mean']:.4f} ± {base['lds_se']:.4f}), "
                          f"{now['seconds']:.2f} s (baseline {base['seconds']:.2f} s) — {'FAIL' if problems else 'ok'}")
    if update or any("baseline written" in line or "calibration written" in line for line in report):
        Path(baselines).write_text(json.dumps(spec, indent=1) + "\n")
    return report, failures
