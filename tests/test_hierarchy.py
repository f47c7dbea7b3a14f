"""The hierarchy task (002 App. C): the data are the tree, training learns it coarsest level first,
and its pure steps are its training."""
from __future__ import annotations

import torch

from tdabench.tasks.hierarchy import Hierarchy, HierarchyConfig, tree_features


def test_features_are_the_tree():
    y = tree_features(levels=3, branching=2)                  # nodes: root | 2 | 4 leaves
    assert y.shape == (4, 7)
    assert y[:, 0].eq(1).all()                                 # everything is living
    assert y[:, 1:3].tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert torch.equal(y[:, 3:], torch.eye(4, dtype=y.dtype))
    task = Hierarchy(HierarchyConfig(levels=3))
    assert task.labels(1).tolist() == [0, 0, 1, 1] and task.labels(2).tolist() == [0, 1, 2, 3]


def test_levels_are_learned_coarsest_first():
    """The step at which each level's features are half learned grows with the level (Saxe et al.'s stages)."""
    task = Hierarchy()
    y, levels = task.train_data()[1], task.config.levels
    spans = [slice(2**lv - 1, 2 ** (lv + 1) - 1) for lv in range(levels)]          # node columns of each level
    errors: list[list[float]] = []

    def record(step, model, lr):
        out = task.outputs(model, task.train_data()).detach()
        errors.append([float(((out[:, s] - y[:, s]) ** 2).sum() / (y[:, s] ** 2).sum()) for s in spans])

    steps = tuple(range(1, task.config.steps + 1))
    task.train(task.make_model(0), torch.arange(task.n_train), 0, on_checkpoint=record, checkpoint_steps=steps)
    half = [next(t for t, e in enumerate(errors) if e[lv] < 0.5) for lv in range(1, levels)]
    assert half == sorted(half) and half[-1] - half[0] > 100, half
    assert max(errors[-1]) < 1e-3                                                   # and all of it by the end


def test_pure_steps_are_train_and_deterministic():
    task = Hierarchy(HierarchyConfig(steps=50))
    a = task.train(task.make_model(1), torch.arange(task.n_train), 0)
    b = task.train(task.make_model(1), torch.arange(task.n_train), 0)
    final = task.unroll(task.make_model(1), torch.arange(task.n_train), 0).run()["params"]
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name])
        torch.testing.assert_close(final[name], p.detach(), rtol=1e-10, atol=1e-14)
