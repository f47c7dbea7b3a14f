"""Mislabel detection (``gt.kind=mislabel``): flip a seeded fraction of a classifier's training labels,
train the reference model on them, and rank every training example by its self-influence.

The protocol of dattri's ``mislabel_detection_auc``, kronfluence's "fraction found after inspecting
10 % / 20 %" and OpenDataVal's corrupted-sample discovery: no retraining, so its ground truth is the set
of flipped examples.  Three pieces, none of which a task or a method has to implement:

- ``mark`` adds the noise fraction to the task's description (so the reference model and the records
  are keyed apart from the clean task's); ``corrupt`` keeps the clean labels and flips seed s's
  examples in place, each to another class drawn uniformly, in the label tensor that ``train_data()``
  returns — every path that trains or scores reads that tensor (checked: a task that builds a fresh
  batch per call is refused, naming why).
- ``flipped_mask``: which examples seed s flips (a seeded sample of round(fraction × n)).
- ``self_influence``: ``scores[i, i]`` of any method — the training set scored as its own queries, in
  blocks of ``block`` rows, so the n × n matrix is never held; a method's ``fit`` runs once.

Score sign: ``scores[i, i]`` predicts the change in example i's own loss when i is included — negative
for an example that helps itself; a mislabelled example, which the others do not explain, has the most
negative.  The metric (``metrics/mislabel.py``) ranks by −score.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tdabench.api.config import ConfigError
from tdabench.toolkit.meter import Meter, Usage
from tdabench.api.task import Task, take

if TYPE_CHECKING:
    from tdabench.api.method import Context, Method

SEED_OFFSET = 0x1AB3_0000        # the flips' generator: not the data order's, not a retrain's


def labels(task: Task) -> Tensor:
    """The class labels of the task's training batch (its last item); a ``ConfigError`` naming the
    field and the fix when the task is not a classifier."""
    y = task.train_data()[-1]
    if y.dim() != 1 or y.is_floating_point():
        raise ConfigError(f"gt.kind=mislabel flips class labels; task {task.name}'s training batch ends with "
                          f"{'floats' if y.is_floating_point() else 'a tensor'} of shape {list(y.shape)}, not one "
                          f"integer class per row; use gt.kind=subsets on this task, or a classification task "
                          f"(digits, mnist, mnist1d)")
    return y


def count(n_train: int, fraction: float) -> int:
    """How many labels are flipped: round(fraction × n_train)."""
    return int(round(fraction * n_train))


def flipped_mask(n_train: int, fraction: float, seed: int) -> Tensor:
    """``[n_train]`` bool: the examples seed ``seed`` flips."""
    gen = torch.Generator().manual_seed(SEED_OFFSET + int(seed))
    mask = torch.zeros(n_train, dtype=torch.bool)
    mask[torch.randperm(n_train, generator=gen)[: count(n_train, fraction)]] = True
    return mask


def check(task: Task, fraction: float) -> None:
    """Before any work: a classifier with at least two classes, a fraction that flips at least one label
    and leaves most of them, and a label tensor that the task hands out itself (not a fresh copy)."""
    y = labels(task)
    if count(task.n_train, fraction) < 1:
        raise ConfigError(f"gt.mislabel_fraction={fraction}: flips no label of task {task.name}'s {task.n_train} "
                          f"examples; use at least {1 / task.n_train:.3g} (the protocol's default is 0.1)")
    if int(y.max()) < 1:
        raise ConfigError(f"gt.kind=mislabel: task {task.name}'s training labels hold one class only; there is "
                          f"no other class to flip to")
    if task.train_data()[-1].data_ptr() != y.data_ptr():
        raise ConfigError(f"gt.kind=mislabel: task {task.name} builds a new training batch at every train_data() "
                          f"call, so flipped labels would not reach its training; cache the batch (as digits does)")


def mark(task: Task, fraction: float) -> None:
    """Key the task apart from the clean one: its description gains the noise fraction (no data is read)."""
    if getattr(task, "_noise_fraction", None) is not None:
        return
    task._noise_fraction = fraction
    describe = task.describe
    task.describe = lambda: {**describe(), "label_noise": {"fraction": fraction}}   # the instance's own


def corrupt(task: Task, fraction: float, seed: int) -> Tensor:
    """Put seed ``seed``'s flipped labels into the task's label tensor, in place, from the clean labels
    (kept at the first call): each flipped example moves to one of the other classes, uniformly.
    Returns the mask ``[n_train]``."""
    if getattr(task, "_noise_fraction", None) != fraction:
        raise RuntimeError("labelnoise.corrupt: call mark(task, fraction) first (spec.resolve does)")
    y = labels(task)
    if getattr(task, "_clean_labels", None) is None:
        task._clean_labels = y.clone()
    clean = task._clean_labels
    classes = int(max(int(clean.max()), int(task.query_data()[-1].max())) + 1)
    mask = flipped_mask(task.n_train, fraction, seed)
    gen = torch.Generator().manual_seed(SEED_OFFSET + int(seed) + 1)
    shift = torch.randint(1, classes, (int(mask.sum()),), generator=gen)                # never 0: a new class
    noisy = clean.clone()
    where = mask.nonzero().squeeze(1).to(clean.device)
    noisy[where] = (clean[where] + shift.to(clean.device)) % classes
    y.copy_(noisy)
    if not torch.equal(task.train_data()[-1], noisy):
        raise ConfigError(f"gt.kind=mislabel: task {task.name}'s train_data() did not keep the flipped labels")
    return mask


def self_influence(method: "Method", ctx: "Context", block: int = 1024) -> tuple[Tensor, Usage, Usage]:
    """``scores[i, i]`` for every training example ``[n_train]``, with the fit's and the scoring's usage:
    ``fit`` once, then the training rows scored as queries ``block`` at a time (``[n_train, block]`` held)."""
    n = ctx.n_train
    with Meter(ctx.device) as fit:
        method.fit(ctx)
    out = torch.empty(n)
    with Meter(ctx.device) as scoring:
        for start in range(0, n, block):
            rows = torch.arange(start, min(n, start + block))
            part = method.score(dataclasses.replace(ctx, query_data=take(ctx.train_data, rows)))
            if tuple(part.shape) != (n, len(rows)):
                raise ValueError(f"{method.name}.score returned {tuple(part.shape)} for {len(rows)} queries, "
                                 f"expected {(n, len(rows))}")
            out[rows] = part.detach().float().cpu()[rows, torch.arange(len(rows))]
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise FloatingPointError(f"{method.name}: {bad} non-finite self-influence scores of {n}; check its settings")
    return out, fit.usage, scoring.usage


def found_after(suspicion: Tensor, flipped: Tensor, fraction: float) -> float:
    """The share of the flipped examples among the ``ceil(fraction × n)`` most suspicious (ties: lower index first)."""
    k = math.ceil(fraction * len(suspicion))
    top = torch.argsort(-suspicion.double(), stable=True)[:k]
    return float(flipped[top].sum()) / max(int(flipped.sum()), 1)
