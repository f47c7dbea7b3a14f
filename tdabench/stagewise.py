"""Attribution over training time (002): every method evaluated at each checkpoint of the reference run
against the ground truth measured at the same point of every retrain.

``stagewise(spec)`` runs the pipeline once per checkpoint c = 1..``gt.checkpoints`` (records, stored
scores and caching as for any run; each checkpoint is its own ground-truth row ``label @c``), then
reports the metric per checkpoint (LDS(t) for α-subsets, the LOO correlation for leave-one-out) and,
for leave-one-out, how well each method's influence *trajectory* follows the retrained one per pair
(i, j): the Pearson correlation over checkpoints of score_ij(t) and −Δ_ij(t), where Δ_ij(t) is query
j's loss change at t when i is left out (002 Fig. 6; the minus: scores predict the effect of
including i).  Writes ``results/stagewise/<task>.json`` and a plot of the metric over training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .checkpoints import checkpoint_steps
from .files import write_json
from .groundtruth import load_ground_truth
from .pipeline import evaluate, prepare, record_path
from .records import RunResult
from .spec import RunSpec
from .store import load_scores


def pair_correlations(scores: torch.Tensor, effects: torch.Tensor) -> torch.Tensor:
    """Per pair, the Pearson correlation over checkpoints of ``scores`` and ``effects`` (both ``[C, m, q]``);
    NaN where either trajectory is constant.  Shape ``[m, q]``."""
    a, b = scores.double() - scores.double().mean(0), effects.double() - effects.double().mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))


def _loo_effects(spec: RunSpec, plan: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The removed examples ``[m]`` and −Δ(t) ``[C, m, Q]``: each removal's effect on every query, signed
    as an inclusion (the retrain-seed mean)."""
    truth = load_ground_truth(plan.task, plan.gt, seed, spec.results_dir)
    mean = truth.trajectory.mean(0)                                   # shape: [K, C, Q]; row 0 keeps everything
    return truth.removed, (mean[:1] - mean[1:]).transpose(0, 1)


def _trajectory_of(spec: RunSpec, plan: Any, method: Any, seed: int, count: int) -> torch.Tensor:
    """The method's stored scores at every checkpoint, ``[C, n_train, Q]``."""
    out = []
    for c in range(1, count + 1):
        path = record_path(spec.replace(at_checkpoint=c), plan, method, seed)
        out.append(load_scores(path.parent / str(RunResult.load(path).scores_file))[0])
    return torch.stack(out)


def _pairs(spec: RunSpec, plan: Any, count: int, failed: set[str]) -> dict[str, Any]:
    """Per method that ran at every checkpoint: the median trajectory correlation over every seed's
    pairs, and the pair count."""
    out = {}
    for method in (m for m in plan.methods if m.name not in failed):
        values = []
        for seed in spec.seeds:
            removed, effects = _loo_effects(spec, plan, seed)
            scores = _trajectory_of(spec, plan, method, seed, count)[:, removed]
            values.append(pair_correlations(scores, effects).flatten())
        pooled = torch.cat(values)
        pooled = pooled[~pooled.isnan()]
        out[method.name] = {"median": float(pooled.median()) if pooled.numel() else math.nan,
                            "pairs": int(pooled.numel())}
    return out


def stagewise(spec: RunSpec) -> dict[str, Any]:
    """Evaluate ``spec`` at each of its ``gt.checkpoints``; the report (also written as JSON) and failures."""
    plan = prepare(spec)
    count = plan.gt.checkpoints
    steps = checkpoint_steps(plan.task.total_steps(plan.task.n_train), count, "even")
    rows, failures, failed = [], [], set()
    for c, step in enumerate(steps, 1):
        summaries, errors = evaluate(spec.replace(at_checkpoint=c))
        rows += [{**s, "checkpoint": c, "step": step} for s in summaries]
        failures += [f"checkpoint {c}: {e}" for e in errors]
        failed |= {e.split(" ", 1)[0] for e in errors}                     # "METHOD seed N: ..."
    report = {"task": plan.task.name, "ground_truth": plan.gt.label, "steps": list(steps), "rows": rows}
    if plan.gt.kind == "loo":
        report["pair_correlation"] = _pairs(spec, plan, count, failed)
    out = Path(spec.results_dir) / "stagewise" / f"{plan.task.name}.json"
    write_json(out, json.loads(json.dumps(report, default=str)))
    report["json"], report["plot"] = str(out), str(plot_stagewise(report, out.with_suffix(".png")))
    return {**report, "failures": failures}


def plot_stagewise(report: dict[str, Any], path: Path) -> Path:
    """The metric over training steps, one line per method with ±SE bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["method"] == method]
        ax.errorbar([r["step"] for r in rows], [r["mean"] for r in rows],
                    yerr=[0 if r["se"] is None or r["se"] != r["se"] else r["se"] for r in rows], label=method, capsize=3)
    metric = report["rows"][0]["metric"] if report["rows"] else "metric"
    ax.set(xlabel="training step", ylabel=metric, title=f"{report['task']} — {report['ground_truth']}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
