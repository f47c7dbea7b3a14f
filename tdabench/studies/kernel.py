"""The loss kernel (003, 000): a method's train × train matrix — the training set as its own queries —
and how well its hierarchical clustering recovers structure the task knows.

For ``bif`` the matrix is −Cov(ℓ_i, ℓ_j) under the localized posterior; any method gives one (GradSim's
−∇ℓ_i·∇ℓ_j, EK-FAC's influence), so kernels compare on the same footing.  The matrix is symmetrised,
turned into a correlation, and clustered (average linkage on 1 − correlation).  A task that defines
``kernel_labels() -> {name: labels [n_train]}`` (hierarchy: every tree level; digits: the classes) is
scored per labelling by the adjusted Rand index of the clustering cut into as many clusters as the
labelling has, and — when the labellings nest (a tree) — by the cophenetic correlation between the
clustering and the true tree's distances.  Writes the matrix, a clustered heatmap and a JSON report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdabench.toolkit.files import save_tensor, write_json
from tdabench.engine.pipeline import locked_context, locked_fit_and_score, prepare
from tdabench.engine.spec import RunSpec


def correlation(kernel: torch.Tensor) -> np.ndarray:
    """The similarity −scores (how much including i lowers j's loss: the score sign makes help negative),
    symmetrised, as a correlation ``[n, n]``."""
    k = -kernel.double()
    k = (k + k.T) / 2
    d = k.diagonal().abs().clamp(min=1e-300).sqrt()
    return (k / d[:, None] / d[None, :]).clamp(-1, 1).numpy()


def linkage(corr: np.ndarray) -> np.ndarray:
    """Average-linkage clustering on the distance 1 − correlation."""
    from scipy.cluster.hierarchy import linkage as scipy_linkage
    from scipy.spatial.distance import squareform

    dist = 1.0 - corr
    np.fill_diagonal(dist, 0.0)
    return scipy_linkage(squareform((dist + dist.T) / 2, checks=False), method="average")


def tree_distance(labellings: list[np.ndarray]) -> np.ndarray:
    """Condensed distances of a tree given by nested labellings (coarse to fine): items first separated
    at level ℓ are at distance L − ℓ (L labellings), identical leaves at 0."""
    from scipy.spatial.distance import squareform

    n = len(labellings[0])
    dist = 1.0 - np.eye(n)                            # distinct items are apart even within the finest label
    for labels in labellings:
        dist += labels[:, None] != labels[None, :]
    return squareform(dist, checks=False)


def score_structure(z: np.ndarray, labellings: dict[str, np.ndarray]) -> dict[str, Any]:
    """Adjusted Rand index per labelling and, for nested labellings, the cophenetic correlation."""
    from scipy.cluster.hierarchy import cophenet, fcluster
    from sklearn.metrics import adjusted_rand_score

    out: dict[str, Any] = {"ari": {}}
    for name, labels in labellings.items():
        k = len(np.unique(labels))
        cut = fcluster(z, t=k, criterion="maxclust")
        out["ari"][name] = float(adjusted_rand_score(labels, cut))
    ordered = sorted(labellings.values(), key=lambda a: len(np.unique(a)))
    nested = all(np.unique(np.stack([a, b]), axis=1).shape[1] == len(np.unique(b)) for a, b in zip(ordered, ordered[1:]))
    if len(ordered) > 1 and nested:
        out["cophenetic"] = float(cophenet(z, tree_distance(ordered))[0])
    return out


def kernel_matrix(spec: RunSpec, method_index: int, seed: int) -> tuple[torch.Tensor, Any]:
    """The method's scores with the attribution set as the queries: ``[n_train, n_train]``."""
    plan = prepare(spec)
    method, task = plan.methods[method_index], plan.task
    ctx = locked_context(spec, task, method, seed)
    ctx = dataclasses.replace(ctx, query_data=ctx.train_data)
    return locked_fit_and_score(method, ctx).scores, plan


def kernel_study(spec: RunSpec) -> list[dict[str, Any]]:
    """Every (method, seed) of ``spec``: matrix, heatmap and structure scores, written under
    ``results/kernel/``; the reports."""
    reports = []
    for index, name in enumerate(spec.methods):
        for seed in spec.seeds:
            matrix, plan = kernel_matrix(spec, index, seed)
            corr = correlation(matrix)
            z = linkage(corr)
            hook = getattr(plan.task, "kernel_labels", None)
            labellings = {k: np.asarray(v) for k, v in hook().items()} if callable(hook) else {}
            stem = Path(spec.results_dir) / "kernel" / f"{plan.task.name}-{name}-seed{seed}"
            save_tensor(stem.with_suffix(".pt"), matrix)
            report = {"task": plan.task.name, "method": name, "seed": seed, "n": int(matrix.shape[0]),
                      **score_structure(z, labellings), "matrix": str(stem.with_suffix(".pt"))}
            report["heatmap"] = str(heatmap(corr, z, stem.with_suffix(".png"), f"{plan.task.name} — {name} kernel"))
            write_json(stem.with_suffix(".json"), report)
            reports.append(report)
    return reports


def heatmap(corr: np.ndarray, z: np.ndarray, path: Path, title: str) -> Path:
    """The correlation matrix in the clustering's leaf order, with its dendrogram above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    fig, (top, ax) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [1, 4]})
    order = dendrogram(z, ax=top, no_labels=True, color_threshold=0)["leaves"]
    top.set_axis_off()
    image = ax.imshow(corr[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set(title=title, xticks=[], yticks=[])
    fig.colorbar(image, ax=ax, fraction=0.046)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
