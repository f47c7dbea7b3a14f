"""Plots (seaborn, PNG) from run records; every function returns the path (a scaling study draws its own,
``tdabench.studies.scaling``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from tdabench.toolkit.figures import pyplot as _setup, save as _save


def _in(regime: str) -> str:
    return f" [{regime}]" if regime else ""


def _label(row: dict[str, Any]) -> str:
    return row["method"] + (f"\n{row['method_settings']}" if row.get("method_settings") else "")


def lds_bars(rows: list[dict[str, Any]], task: str, path: Path, regime: str = "") -> Path:
    """LDS mean per method (± SE error bars) on one task, with the noise ceiling when known; ``regime``
    (a ground-truth label) is named in the title."""
    plt = _setup()
    board = sorted((r for r in rows if r["task"] == task), key=lambda r: -r["mean"])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(board), 4))
    x = np.arange(len(board))
    se = [0 if r["se"] is None or np.isnan(r["se"]) else r["se"] for r in board]
    ax.bar(x, [r["mean"] for r in board], yerr=se, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(x, [_label(r) for r in board], fontsize=10)
    ceiling = [r["noise_ceiling"] for r in board if r.get("noise_ceiling") is not None]
    if ceiling:
        ax.axhline(ceiling[0], ls="--", color="gray", label="noise ceiling")
        ax.legend(loc="upper right")
    ax.axhline(0, color="black", lw=0.8)
    seeds = max(len(r["seeds"]) for r in board)
    ax.set(ylabel="LDS (mean ± SE over seeds)", title=f"{task}{_in(regime)}: LDS per method ({seeds} seeds)")
    return _save(fig, path)


def lds_vs_cost(rows: list[dict[str, Any]], task: str, path: Path, regime: str = "") -> Path:
    """LDS against fit+score seconds and against peak memory: the accuracy/cost trade-off."""
    return _save(lds_vs_cost_figure(rows, task, regime), path)


def lds_vs_cost_figure(rows: list[dict[str, Any]], task: str, regime: str = "") -> Any:
    """The figure of :func:`lds_vs_cost`, laid out, its point labels nudged apart."""
    plt = _setup()
    board = [r for r in rows if r["task"] == task]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    labels = []
    for ax, key, xlabel in ((axes[0], "seconds", "fit + score time (s, log scale)"),
                            (axes[1], "peak_rss_mb", "peak resident memory (MB, log scale)")):
        labels.append([_point(ax, r, key) for r in board])
        ax.set_xscale("log")
        ax.set(xlabel=xlabel)
    axes[0].set(ylabel="LDS (mean ± SE)")
    fig.suptitle(f"{task}{_in(regime)}: LDS against cost")
    fig.tight_layout()
    for texts in labels:
        spread_labels(fig, texts)
    return fig


def _point(ax: Any, row: dict[str, Any], key: str) -> Any:
    """One method's point (± SE) and its label (in the point's colour, outside the layout); the label."""
    x = max(row["fit_seconds"] + row["score_seconds"] if key == "seconds" else row["peak_rss_mb"], 1e-3)
    se = 0 if row["se"] is None or np.isnan(row["se"]) else row["se"]
    line = ax.errorbar(x, row["mean"], yerr=se, fmt="o", capsize=3)
    text = ax.annotate(row["method"], (x, row["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8,
                       color=line[0].get_color())
    text.set_in_layout(False)   # so that laying the figure out again never moves the points under placed labels
    return text


def spread_labels(fig: Any, texts: list[Any], pad: float = 2.0) -> None:
    """Move each annotation label (lowest first) by the smallest vertical shift that clears the labels
    already placed, inside its axes when it can be: a greedy pass in display coordinates, ``pad`` pixels apart."""
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for text in sorted(texts, key=lambda t: t.get_window_extent(renderer).y0):
        box = text.get_window_extent(renderer)
        shift = _free_shift(box, placed, text.axes.get_window_extent(renderer), pad)
        dx, dy = text.xyann
        text.xyann = (dx, dy + shift * 72 / fig.dpi)
        placed.append(box.translated(0, shift))


def _free_shift(box: Any, placed: list[Any], frame: Any, pad: float) -> float:
    """The vertical shift of ``box`` closest to 0 that overlaps none of ``placed`` (within ``frame`` if one does)."""
    candidates = sorted({0.0, *(b.y1 + pad - box.y0 for b in placed), *(b.y0 - pad - box.y1 for b in placed)}, key=abs)
    free = [s for s in candidates if not any(box.translated(0, s).overlaps(b) for b in placed)]
    inside = [s for s in free if frame.y0 <= box.y0 + s and box.y1 + s <= frame.y1]
    return (inside or free)[0]   # never empty: just above the highest label is free


def per_query(records: list[Any], task: str, path: Path, order: Optional[list[str]] = None, regime: str = "") -> Path:
    """The distribution of per-query LDS (all seeds pooled) per method, as box plots, in ``order`` (the
    leaderboard's; default: by mean LDS, best first, as the bar chart)."""
    return _save(per_query_figure(records, task, order, regime), path)


def per_query_figure(records: list[Any], task: str, order: Optional[list[str]] = None, regime: str = "") -> Any:
    """The figure of :func:`per_query`."""
    plt = _setup()
    import seaborn as sns

    data: dict[str, list[Any]] = {"method": [], "LDS": []}
    means: dict[str, list[float]] = {}
    for rec in records:
        if rec.task == task and "lds" in rec.metrics:
            values = [v for v in rec.metrics["lds"]["per_query"] if v is not None]
            data["method"] += [rec.method] * len(values)
            data["LDS"] += values
            means.setdefault(rec.method, []).append(_nan(rec.metrics["lds"]["value"]))
    ranked = sorted(means, key=lambda m: -np.nan_to_num(np.mean(means[m]), nan=-np.inf))
    first = [m for m in order or [] if m in means]
    order = first + [m for m in ranked if m not in first]
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(order), 4))
    sns.boxplot(data=data, x="method", y="LDS", order=order, ax=ax, color="tab:blue", fliersize=2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="per-query LDS (Spearman over subsets)", title=f"{task}{_in(regime)}: per-query LDS spread")
    return fig


def _nan(value: Optional[float]) -> float:
    return np.nan if value is None else float(value)


def loss_traces(record: Any, path: Path) -> Path:
    """Per-chain mean training and query loss over SGLD draws (a record with sampler traces)."""
    plt = _setup()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    extras = record.extras
    for ax, key, title in ((axes[0], "train_loss_trace", "mean training loss"), (axes[1], "query_loss_trace", "mean query loss")):
        for c, trace in enumerate(extras[key]):
            ax.plot(trace, lw=0.8, label=f"chain {c}")
        if key == "train_loss_trace" and "train_loss_at_w_star" in extras:
            ax.axhline(extras["train_loss_at_w_star"], ls="--", color="black", lw=1, label="at w*")
        ax.set(xlabel="recorded draw", ylabel=title)
    axes[0].legend(fontsize=8)
    ess = extras.get("ess_train_loss")
    fig.suptitle(f"{record.method} on {record.task}, seed {record.seed}: loss traces"
                 + (f" (ESS of the training-loss trace: {ess:.0f})" if isinstance(ess, (int, float)) else ""))
    return _save(fig, path)
