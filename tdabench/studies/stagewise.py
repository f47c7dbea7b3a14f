"""Attribution over training time (002): every method evaluated at each checkpoint of the reference run
against the ground truth measured at the same point of every retrain.

``stagewise(spec)`` runs the pipeline once per checkpoint c = 1..``gt.checkpoints`` (records, stored
scores and caching as for any run; each checkpoint is its own ground-truth row ``label @c``), then
reports the metric per checkpoint (LDS(t) for α-subsets, the LOO correlation for leave-one-out) and,
for leave-one-out, how well each method's influence *trajectory* follows the retrained one per pair
(i, j): the Pearson correlation over checkpoints of score_ij(t) and −Δ_ij(t), where Δ_ij(t) is query
j's loss change at t when i is left out (002 Fig. 6; the minus: scores predict the effect of
including i).  A task with a closed-form training (``deep_linear``) adds its analytical influence
and leave-one-out effect (002 C.6) as two more trajectories.  Writes ``results/stagewise/<task>.json`` and a plot of the metric over training — or,
where git tracks that report (the committed board) and ``--update-board`` was not given,
``<task>-<settings key>.json`` beside it, so that a run of other settings never overwrites it.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdabench.toolkit.checkpoints import checkpoint_steps
from tdabench.toolkit.files import write_json
from tdabench.engine.groundtruth import load_ground_truth
from tdabench.engine.pipeline import evaluate, prepare, record_path
from tdabench.api.config import content_hash
from tdabench.engine.records import RunResult, committed
from tdabench.engine.reference import reference_model
from tdabench.engine.spec import RunSpec
from tdabench.engine.store import load_scores

log = logging.getLogger("tdabench")


def pair_correlations(scores: torch.Tensor, effects: torch.Tensor) -> torch.Tensor:
    """Per pair, the Pearson correlation over checkpoints of ``scores`` and ``effects`` (both ``[C, m, q]``);
    NaN where either trajectory is constant.  Shape ``[m, q]``."""
    a, b = scores.double() - scores.double().mean(0), effects.double() - effects.double().mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))


def _significant(x: torch.Tensor, floor: float) -> torch.Tensor:
    """Signs of ``x`` ``[C, P]`` where |x| exceeds ``floor`` × each column's largest |x|, else 0."""
    return torch.where(x.abs() > floor * x.abs().amax(0).clamp(min=1e-30), x.sign(), torch.zeros_like(x))


def flip_times(x: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Per column of ``x`` ``[C, P]``: the first checkpoint whose clear sign (|x| above ``floor`` of the
    column's peak) differs from the first clear sign; −1 where the sign never flips."""
    signs = _significant(x, floor)
    first = signs.gather(0, (signs != 0).float().argmax(0, keepdim=True))      # the first clear sign, [1, P]
    flipped = (signs == -first) & (first != 0)
    return torch.where(flipped.any(0), flipped.float().argmax(0), torch.full_like(first[0], -1).long())


def timing_agreement(scores: torch.Tensor, effects: torch.Tensor, tolerance: int = 1) -> dict[str, float]:
    """How often a method's trajectory peaks and changes sign when the retrained one does, within
    ``tolerance`` checkpoints (``[C, m, q]`` each): the fraction of pairs whose peaks (largest |value|)
    agree, and over the pairs whose retrained effect flips sign, the fraction the method flips with."""
    s, e = scores.flatten(1).double(), effects.flatten(1).double()
    peaks = (s.abs().argmax(0) - e.abs().argmax(0)).abs() <= tolerance
    fs, fe = flip_times(s), flip_times(e)
    flips = fe >= 0
    with_it = (fs[flips] >= 0) & ((fs[flips] - fe[flips]).abs() <= tolerance)
    return {"peak_agreement": float(peaks.double().mean()), "flip_pairs": int(flips.sum()),
            "flip_agreement": float(with_it.double().mean()) if flips.any() else math.nan}


def loo_effects(truth: Any) -> torch.Tensor:
    """−Δ(t) ``[C, m, Q]`` of a leave-one-out ground truth measured along training: each removal's
    effect on every query, signed as an inclusion (the retrain-seed mean)."""
    mean = truth.trajectory.mean(0)                                   # shape: [K, C, Q]; row 0 keeps everything
    return (mean[:1] - mean[1:]).transpose(0, 1)


def _loo_effects(spec: RunSpec, plan: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The removed examples ``[m]`` and their effects (``loo_effects``) of ``seed``'s ground truth."""
    truth = load_ground_truth(plan.task, plan.gt, seed, spec.results_dir)
    return truth.removed, loo_effects(truth)


def _trajectory_of(spec: RunSpec, plan: Any, method: Any, seed: int, count: int) -> torch.Tensor:
    """The method's stored scores at every checkpoint, ``[C, n_train, Q]``."""
    out = []
    for c in range(1, count + 1):
        path = record_path(spec.replace(at_checkpoint=c), plan, method, seed)
        out.append(load_scores(path.parent / str(RunResult.load(path).scores_file))[0])
    return torch.stack(out)


def report_path(spec: RunSpec, task: str) -> Path:
    """``stagewise/<task>.json`` under the results directory; where git tracks it and the spec does not
    ask to update the board, ``<task>-<key of the methods, seeds and settings>.json`` instead."""
    out = Path(spec.results_dir) / "stagewise" / f"{task}.json"
    if spec.update_board or not committed([out]):
        return out
    key = content_hash([task, spec.methods, spec.seeds, sorted((k, sorted(v.items())) for k, v in spec.overrides.items())], 8)
    log.info("%s is the committed board's report (--update-board rewrites it): writing %s-%s.json", out, task, key)
    return out.with_name(f"{task}-{key}.json")


def _pairs(spec: RunSpec, plan: Any, steps: list[int], failed: set[str], plot: Path) -> dict[str, Any]:
    """Per method that ran at every checkpoint: the median trajectory correlation over every seed's
    pairs, and the pair count; draws the first seed's most moving pairs."""
    out, timing, count = {}, {}, len(steps)
    methods = [m for m in plan.methods if m.name not in failed]
    for seed in spec.seeds:
        removed, effects = _loo_effects(spec, plan, seed)
        curves = {m.name: _trajectory_of(spec, plan, m, seed, count)[:, removed] for m in methods}
        curves.update(closed_form_curves(plan.task, steps, removed))
        for name, scores in curves.items():
            out.setdefault(name, []).append(pair_correlations(scores, effects).flatten())
            timing.setdefault(name, []).append(timing_agreement(scores, effects))
        if seed == spec.seeds[0]:
            plot_pairs(steps, effects, curves, removed, plot)
    summary = {}
    for name, values in out.items():
        pooled = torch.cat(values)
        pooled = pooled[~pooled.isnan()]
        summary[name] = {"median": float(pooled.median()) if pooled.numel() else math.nan, "pairs": int(pooled.numel()),
                         "peak_agreement": float(np.mean([t["peak_agreement"] for t in timing[name]])),
                         "flip_pairs": sum(t["flip_pairs"] for t in timing[name]),
                         "flip_agreement": float(np.nanmean([t["flip_agreement"] for t in timing[name]]))}
    return summary


def closed_form_curves(task: Any, steps: list[int], removed: torch.Tensor) -> dict[str, torch.Tensor]:
    """For a task whose training has a closed form (``task.deep_linear()``, 002 C.6), its first-order
    influence and its exact leave-one-out effect at every step, ``[C, m, Q]`` each, as references next
    to the methods; none for any other task."""
    if not callable(getattr(task, "deep_linear", None)):
        return {}
    model, queries = task.deep_linear(), tuple(t.cpu() for t in task.query_data()[:2])
    return {"analytic-if": torch.stack([model.influence(step, queries)[removed] for step in steps]),
            "analytic-loo": torch.stack([model.loo(step, queries)[removed] for step in steps])}


def stagewise(spec: RunSpec) -> dict[str, Any]:
    """Evaluate ``spec`` at each of its ``gt.checkpoints``; the report (also written as JSON) and failures."""
    plan = prepare(spec)
    spec = spec.replace(need_scores=plan.gt.kind == "loo")           # the pair trajectories read every score matrix
    count = plan.gt.checkpoints
    steps = checkpoint_steps(plan.task.total_steps(plan.task.n_train), count, "even")
    rows, failures, failed = [], [], set()
    for c, step in enumerate(steps, 1):
        summaries, errors = evaluate(spec.replace(at_checkpoint=c))
        rows += [{**s, "checkpoint": c, "step": step} for s in summaries]
        failures += [f"checkpoint {c}: {e}" for e in errors]
        failed |= {e.split(" ", 1)[0] for e in errors}                     # "METHOD seed N: ..."
    report = {"task": plan.task.name, "ground_truth": plan.gt.label, "steps": list(steps), "rows": rows}
    out = report_path(spec, plan.task.name)
    if plan.gt.kind == "loo":
        report["pair_correlation"] = _pairs(spec, plan, list(steps), failed, out.with_name(f"{out.stem}-pairs.png"))
    if callable(getattr(plan.task, "hidden", None)):       # a task that exposes its hidden representations
        _, along, _ = reference_model(plan.task, spec.seeds[0], spec.results_dir, count, "even")
        report["mds"] = str(plot_mds(plan.task, along, out.with_name(f"{out.stem}-mds.png")))
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


def plot_pairs(steps: list[int], effects: torch.Tensor, methods: dict[str, torch.Tensor], removed: torch.Tensor,
               path: Path, count: int = 4) -> Path:
    """Influence over training for ``count`` pairs (002 Fig. 3): those whose retrained effect changes sign
    most strongly (else those that move most); per pair the leave-one-out effect −Δ_ij(t) and each
    method's score_ij(t), each scaled to unit maximum so that shapes (sign flips, peaks) compare.
    ``effects``/``methods[*]``: ``[C, m, q]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    high, low = effects.amax(0), effects.amin(0)                                  # shape: [m, q]
    flip, span = torch.minimum(high, -low).clamp(min=0), high - low
    rank = (flip / flip.max() if flip.max() > 0 else flip) + 1e-3 * span / span.max().clamp(min=1e-30)
    top = rank.flatten().argsort(descending=True)[:count]
    fig, axes = plt.subplots(1, len(top), figsize=(3.2 * len(top), 3), squeeze=False)
    for ax, flat in zip(axes[0], top.tolist()):
        i, j = divmod(flat, effects.shape[2])
        for name, curve in [("leave-one-out", effects[:, i, j]), *[(n, s[:, i, j]) for n, s in methods.items()]]:
            scale = float(curve.abs().max()) or 1.0
            ax.plot(steps, (curve / scale).tolist(), label=name, lw=2 if name == "leave-one-out" else 1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=f"example {int(removed[i])} → query {j}", xlabel="training step")
    axes[0][0].set_ylabel("effect of including (scaled)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def classical_mds(points: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Torgerson's classical MDS of ``points`` ``[N, D]``: coordinates ``[N, dims]`` whose distances best
    match the Euclidean ones (top eigenvectors of the double-centred squared-distance matrix)."""
    d2 = torch.cdist(points.double(), points.double()) ** 2
    n = d2.shape[0]
    centre = torch.eye(n, dtype=d2.dtype) - 1.0 / n
    values, vectors = torch.linalg.eigh(-0.5 * centre @ d2 @ centre)
    top = values.argsort(descending=True)[:dims]
    return vectors[:, top] * values[top].clamp(min=0).sqrt()


def plot_mds(task: Any, checkpoints: list, path: Path) -> Path:
    """The hidden representations of every query item along the reference run, embedded jointly by
    classical MDS (002 Fig. 4b): one line per item from the first checkpoint (dot) to the last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = task.make_model(0)
    reps = []
    for ckpt in checkpoints:
        model.load_state_dict(ckpt.state)
        reps.append(task.hidden(model).cpu())                                     # shape: [n_items, H]
    xy = classical_mds(torch.cat(reps)).view(len(reps), -1, 2)                     # shape: [C, n_items, 2]
    fig, ax = plt.subplots(figsize=(5, 5))
    for item in range(xy.shape[1]):
        ax.plot(xy[:, item, 0].tolist(), xy[:, item, 1].tolist(), lw=1)
        ax.scatter([float(xy[0, item, 0])], [float(xy[0, item, 1])], s=8, color="black")
        ax.annotate(str(item), (float(xy[-1, item, 0]), float(xy[-1, item, 1])), fontsize=8)
    ax.set(title=f"{task.name}: hidden representations over training (MDS)", xticks=[], yticks=[])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
