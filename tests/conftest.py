"""Shared fixtures: tiny task instances and a context builder for calling methods directly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tdabench.api.method import Context
from tdabench.engine.reference import reference_model
from tdabench.api.seeds import reference_seed
from tdabench.api.task import Task
from tdabench.tasks.regression import Regression, RegressionConfig

torch.set_num_threads(1)  # the tiny models of the tests run fastest on one thread


def make_context(task: Task, tmp_path: Path, seed: int = 0, n_checkpoints: int = 0, spacing: str = "even") -> Context:
    """The context the runner would build: reference model (cached under tmp_path) and data."""
    model, checkpoints, key = reference_model(task, seed, tmp_path, n_checkpoints, spacing)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=task.device, seed=seed, cache_dir=cache, checkpoints=checkpoints, model_key=key,
                   train_seed=reference_seed(seed))


@pytest.fixture
def small_regression() -> Regression:
    return Regression(RegressionConfig(n_train=40, n_query=8, dim=4))
