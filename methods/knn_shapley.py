"""knn_shapley: the exact Data Shapley value of each training example for a K-nearest-neighbour
classifier (Jia et al. 2019) through dattri's ``KNNShapleyAttributor``: per query j, training examples
sorted by distance, the recursion from the farthest gives each one's marginal contribution to the
K-NN's correctness on j.  A value (not a gradient): scores[i, j] = −value (a same-label neighbour helps
the query's loss).  Distances are Euclidean between the representations ``repsim`` uses (the input of
the final linear layer, or ``module``), or between the raw inputs (``features="input"``).  Defined for
classification tasks only (the batch's last item is the label); others are refused before any work."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tdabench.api.checks import choices_and_patterns, integer
from tdabench.toolkit.dattri_bridge import DattriMethod, class_labels, loader, session
from tdabench.api.method import Context, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.task import Batch, Task

from tdabench.methods.repsim import find_module, representations


@dataclass(frozen=True)
class KNNShapleyConfig(MethodConfig):
    k: int = 10                                                  # neighbours of the K-NN classifier
    features: Literal["representation", "input"] = "representation"   # what the distance is measured between
    module: str = ""                                             # representation: input of this module ("": last Linear)
    batch_size: int = 256                                        # rows per forward pass

    def __post_init__(self) -> None:
        choices_and_patterns(self, "knn_shapley")
        integer(self, "knn_shapley", "k", "neighbours of the K-NN classifier", minimum=1)
        integer(self, "knn_shapley", "batch_size", "rows per forward pass", minimum=1)


@register_method
class KNNShapley(DattriMethod):
    name = "knn_shapley"
    description = "exact Data Shapley of a K-NN classifier on representations (dattri; classifiers only)"
    Config = KNNShapleyConfig
    tunable = {"k": ("1", "3", "5", "10", "25", "50")}   # --set knn_shapley.k=auto (neighbours)
    influence_scale = False

    def check(self, task: Task) -> None:
        class_labels(task, task.train_data(), self.name)

    def features(self, ctx: Context, data: Batch, measured: bool) -> Tensor:
        """``[n, h]``: the flattened first item, or the representation (training examples through the loss,
        queries through the measurement, as ``repsim`` does)."""
        if self.config.features == "input":
            return data[0].reshape(data[0].shape[0], -1).double()
        fn = ctx.task.measurement if measured else ctx.task.loss
        module = find_module(ctx.model, self.config.module)
        return representations(ctx.model, module, fn, data, self.config.batch_size)

    def fit(self, ctx: Context) -> None:
        self._fitted = ctx.model_key or id(ctx.model)      # nothing query-independent to precompute

    def score(self, ctx: Context) -> Tensor:
        from dattri.algorithm import KNNShapleyAttributor

        y_train = class_labels(ctx.task, ctx.train_data, self.name)
        y_query = class_labels(ctx.task, ctx.query_data, self.name)
        train = (self.features(ctx, ctx.train_data, False), y_train)
        query = (self.features(ctx, ctx.query_data, True), y_query)
        with session(torch.float64):
            att = KNNShapleyAttributor(k_neighbors=self.config.k)
            values = att.attribute(loader(train, ctx.n_train), loader(query, ctx.n_query),
                                   train_labels=list(y_train), test_labels=list(y_query))   # shape: [n_query, n_train]
        return (-values.T).float().contiguous()                                           # shape: [n_train, n_query]
