"""Plots (seaborn, PNG) from run records and scaling studies; every function returns the path."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _setup() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns
    except ImportError:
        raise ImportError("plots need seaborn and matplotlib: pip install 'tdabench[plots]'") from None
    sns.set_theme(style="whitegrid", context="notebook")
    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


def _label(row: dict[str, Any]) -> str:
    return row["method"] + (f"\n{row['method_settings']}" if row.get("method_settings") else "")


def lds_bars(rows: list[dict[str, Any]], task: str, path: Path) -> Path:
    """LDS mean per method (± SE error bars) on one task, with the noise ceiling when known."""
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
    ax.set(ylabel="LDS (mean ± SE over seeds)", title=f"{task}: LDS per method ({seeds} seeds)")
    return _save(fig, path)


def lds_vs_cost(rows: list[dict[str, Any]], task: str, path: Path) -> Path:
    """LDS against fit+score seconds and against peak memory: the accuracy/cost trade-off."""
    plt = _setup()
    board = [r for r in rows if r["task"] == task]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, xlabel in ((axes[0], "seconds", "fit + score time (s, log scale)"),
                            (axes[1], "peak_rss_mb", "peak resident memory (MB, log scale)")):
        for r in board:
            x = r["fit_seconds"] + r["score_seconds"] if key == "seconds" else r["peak_rss_mb"]
            se = 0 if r["se"] is None or np.isnan(r["se"]) else r["se"]
            ax.errorbar(max(x, 1e-3), r["mean"], yerr=se, fmt="o", capsize=3)
            ax.annotate(r["method"], (max(x, 1e-3), r["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set(xlabel=xlabel)
    axes[0].set(ylabel="LDS (mean ± SE)")
    fig.suptitle(f"{task}: LDS against cost")
    return _save(fig, path)


def per_query(records: list[Any], task: str, path: Path) -> Path:
    """The distribution of per-query LDS (all seeds pooled) per method, as box plots."""
    plt = _setup()
    import seaborn as sns

    data = {"method": [], "LDS": []}
    for rec in records:
        if rec.task == task and "lds" in rec.metrics:
            values = [v for v in rec.metrics["lds"]["per_query"] if v is not None]
            data["method"] += [rec.method] * len(values)
            data["LDS"] += values
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(set(data["method"])), 4))
    sns.boxplot(data=data, x="method", y="LDS", ax=ax, color="tab:blue", fliersize=2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="per-query LDS (Spearman over subsets)", title=f"{task}: per-query LDS spread")
    return _save(fig, path)


def scaling(study: dict[str, Any], path: Path) -> Path:
    """Fit and score seconds and peak memory against the varied size, log-log, one line per method."""
    plt = _setup()
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = dict(zip(study["points"], sns.color_palette(n_colors=len(study["points"]))))
    for method, points in study["points"].items():
        x = [p["value"] for p in points]
        for key, style in (("fit_seconds", "--"), ("score_seconds", "-")):
            if max(p[key] for p in points) < 1e-3:      # no fit stage: nothing to draw
                continue
            axes[0].plot(x, [p[key] for p in points], style, marker="o", color=colors[method],
                         label=f"{method} {key.split('_')[0]} (slope {study['exponents'][method][key]:.2f})")
        axes[1].plot(x, [p["peak_rss_mb"] for p in points], marker="o", color=colors[method], label=method)
    for ax, ylabel in ((axes[0], "seconds (dashed: fit, solid: score)"), (axes[1], "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel=study["field"], ylabel=ylabel)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.suptitle(f"{study['task']}: cost as {study['field']} grows")
    return _save(fig, path)


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
