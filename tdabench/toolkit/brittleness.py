"""Brittleness (``gt.kind=brittleness``; Ilyas et al. 2022, dattri's brittleness test): does removing the k
training examples a method says help a query most, and retraining, flip the query's prediction?

The retrains are top-k removal's (``toolkit/removal.py``: the same masks, followed queries and common
retraining seeds, built after scoring from the stored scores), measured by each query's classification
margin instead of its loss: m = z_y − max_{c≠y} z_c, the logit of its label minus the largest other.  A
prediction is correct while m > 0.  Only queries the model trained on every example classifies correctly
(mean margin over retraining seeds > 0 in row 0) can flip; a followed query that is not is left out.

``margin`` is swapped in for the task's measurement (``measuring_margins``) in whichever process trains:
the executors pass ``measure="margin"`` to their workers, which rebuild the task from its name.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor, nn

from tdabench.api.config import ConfigError
from tdabench.api.task import Batch, Task


def margin(task: Task, model: nn.Module, batch: Batch) -> Tensor:
    """``[B]``: the logit of each row's label minus the largest other logit (> 0: classified correctly); for
    one logit z per row and labels y in {0, 1} (logistic regression), (2y − 1)·z."""
    logits, labels = task.outputs(model, batch).float(), batch[1]          # shape: [B, C] or [B], [B]
    if logits.dim() == 1 or logits.shape[1] == 1:
        return (2 * labels.float() - 1) * logits.reshape(-1)
    own = logits.gather(1, labels[:, None].long()).squeeze(1)
    others = logits.scatter(1, labels[:, None].long(), -math.inf).amax(1)
    return own - others


@contextlib.contextmanager
def measuring_margins(task: Task) -> Iterator[Task]:
    """``task`` whose measurement is the query's margin while the block runs (its own afterwards)."""
    had = "measurement" in vars(task)
    before = vars(task).get("measurement")
    task.measurement = lambda model, batch: margin(task, model, batch)     # the instance's own, as labelnoise.mark
    try:
        yield task
    finally:
        if had:
            task.measurement = before
        else:
            del task.measurement


def check(task: Task) -> None:
    """A margin needs class logits and class labels: the task must be a classifier exposing ``outputs``."""
    if not task.has_outputs:
        raise ConfigError(f"gt.kind=brittleness asks whether a query's predicted class flips, which needs class "
                          f"logits: task {task.name} exposes no outputs(); use gt.kind=removal (its loss) instead")
    labels = task.query_data()[1]
    classes = labels.dim() == 1 and (not labels.is_floating_point() or bool(((labels == 0) | (labels == 1)).all()))
    if not classes:
        raise ConfigError(f"gt.kind=brittleness needs class labels; task {task.name}'s query targets are not "
                          f"classes ({labels.dtype}, shape {tuple(labels.shape)}): use gt.kind=removal instead")


def flips(replicas: Tensor, queries: Tensor, n_fractions: int) -> tuple[Tensor, Tensor]:
    """From the margins ``replicas`` ``[R, 1 + Q·F, n_query]``: which followed queries are correct when
    trained on everything (``[Q]`` bool, mean margin of row 0 > 0), and which flip without their top-k
    (``[Q, F]`` bool, mean margin ≤ 0)."""
    base = replicas[:, 0, queries].mean(0)                                             # shape: [Q]
    removed = replicas[:, 1:, :].reshape(replicas.shape[0], len(queries), n_fractions, -1)
    own = removed[:, torch.arange(len(queries)), :, queries].mean(1)                   # shape: [Q, F]
    return base > 0, own <= 0
