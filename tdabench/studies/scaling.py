"""Scaling studies: fit and score seconds and peak memory of methods as one setting grows.

Cost only — no ground truth is built.  Each value of the varied field gets its own task (or method)
configuration and reference model; the growth exponent is the least-squares slope in log-log.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tdabench.api.config import ConfigError, content_hash
from tdabench.engine import pipeline
from tdabench.engine.spec import RunSpec
from tdabench.toolkit.figures import pyplot, save


def parse_vary(item: str) -> tuple[str, str, tuple[str, ...]]:
    """``"task.n_query=50,100,200"`` → ("task", "n_query", ("50", "100", "200")); no scope means task."""
    if "=" not in item:
        raise ConfigError(f"--vary {item!r}: expected [SCOPE.]FIELD=V1,V2,V3")
    lhs, values = item.split("=", 1)
    scope, key = lhs.split(".", 1) if "." in lhs else ("task", lhs)
    vals = tuple(v for v in values.split(",") if v)
    if len(vals) < 2:
        raise ConfigError(f"--vary {item!r}: at least two values are needed to fit a growth exponent")
    return scope, key, vals


#: Values at or below this are left out of a fit: a time under 1 ms is timer noise, and zero has no logarithm.
FLOOR = 1e-3


def _usable(x: list[float], y: list[float]) -> list[tuple[float, float]]:
    return [(a, b) for a, b in zip(x, y) if a > 0 and b > FLOOR]


def exponent(x: list[float], y: list[float]) -> float:
    """Slope of log y against log x (NaN when fewer than two measurable points of different sizes;
    :func:`exponent_note` says why)."""
    pts = _usable(x, y)
    if len({a for a, _ in pts}) < 2:
        return math.nan
    lx, ly = np.log(np.array(pts)).T
    return float(np.polyfit(lx, ly, 1)[0])


def exponent_note(x: list[float], y: list[float]) -> str:
    """Why :func:`exponent` of ``x, y`` is missing ("" when it is not)."""
    pts = _usable(x, y)
    if len({a for a, _ in pts}) >= 2:
        return ""
    reasons = [f"{n} {why}" for n, why in (
        (sum(a <= 0 for a in x), "with a non-positive size"),
        (sum(a > 0 and b <= FLOOR for a, b in zip(x, y)), f"at or below {FLOOR:g}: under 1 ms is timer noise, "
                                                          f"0 s means no such stage")) if n]
    if len(pts) >= 2:
        reasons.append(f"{len(pts)} at one and the same size")
    return f"{len(pts)} of {len(x)} points usable, needs 2 of different sizes; " + "; ".join(reasons)


def measure_point(run: RunSpec, seed: int) -> dict[str, dict[str, float]]:
    """Cost of each method of ``run`` at one configuration, through the pipeline's own fit and score
    (reference model from the cache)."""
    plan = pipeline.prepare(run)
    out = {}
    for method in plan.methods:
        ctx = pipeline.make_context(run, plan.task, method, seed)
        scored = pipeline.fit_and_score(method, ctx)
        out[method.name] = {"fit_seconds": scored.fit.seconds, "score_seconds": scored.score.seconds,
                            "peak_rss_mb": max(scored.fit.peak_rss_mb, scored.score.peak_rss_mb),
                            **({"peak_cuda_mb": max(u.peak_cuda_mb or 0.0 for u in (scored.fit, scored.score))}
                               if ctx.device.type == "cuda" else {}),
                            "n_train": ctx.n_train, "n_query": ctx.n_query,
                            "n_params": sum(p.numel() for p in ctx.model.parameters())}
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def scaling_study(run: RunSpec, vary: str) -> dict[str, Any]:
    """Measure every value of ``vary``; write the study JSON and its plot under results/scaling."""
    scope, key, values = parse_vary(vary)
    points: dict[str, list[dict[str, Any]]] = {m: [] for m in run.methods}
    for value in values:
        overrides = {**run.overrides, scope: {**run.overrides.get(scope, {}), key: value}}
        costs = measure_point(run.replace(overrides=overrides), run.seeds[0])
        for method, cost in costs.items():   # a non-numeric value (a model name) is placed by its size
            x = float(value) if _is_number(value) else float(cost["n_params"])
            points[method].append({"value": x, "setting": value, **cost})
    exponents = {m: {k: exponent([p["value"] for p in pts], [p[k] for p in pts])
                     for k in ("fit_seconds", "score_seconds", "peak_rss_mb")} for m, pts in points.items()}
    notes = {m: {k: exponent_note([p["value"] for p in pts], [p[k] for p in pts]) for k in exponents[m]}
             for m, pts in points.items()}
    numeric = all(_is_number(v) for v in values)
    study = {"task": run.task, "field": f"{scope}.{key}" if numeric else f"parameters (varying {scope}.{key})", "values": list(values), "points": points,
             "exponents": exponents, "exponent_notes": notes, "overrides": run.overrides}
    folder = Path(run.results_dir) / "scaling" / run.task
    stem = f"{key}-{content_hash([run.methods, study['values'], run.overrides], 8)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(study, indent=1))
    study["json"] = str(folder / f"{stem}.json")
    study["plot"] = str(plot_scaling(study, folder / f"{stem}.png"))
    return study


def plot_scaling(study: dict[str, Any], path: Path) -> Path:
    """Fit and score seconds and peak memory against the varied size, log-log, one line per method."""
    plt = pyplot()
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = dict(zip(study["points"], sns.color_palette(n_colors=len(study["points"]))))
    for method, points in study["points"].items():
        x = [p["value"] for p in points]
        for key, style in (("fit_seconds", "--"), ("score_seconds", "-")):
            if max(p[key] for p in points) < 1e-3:      # no fit stage: nothing to draw
                continue
            axes[0].plot(x, [p[key] for p in points], style, marker="o", color=colors[method],
                         label=f"{method} {key.split('_')[0]} (slope {_slope(study['exponents'][method][key])})")
        axes[1].plot(x, [p["peak_rss_mb"] for p in points], marker="o", color=colors[method], label=method)
    for ax, ylabel in ((axes[0], "seconds (dashed: fit, solid: score)"), (axes[1], "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel=study["field"], ylabel=ylabel)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.suptitle(f"{study['task']}: cost as {study['field']} grows")
    return save(fig, path)


def _slope(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.2f}"
