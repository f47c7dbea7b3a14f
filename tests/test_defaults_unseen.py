"""Defaults that hold on tasks they were not chosen on (issue 34): every method below, at its
defaults, must beat ``random`` by more than 2 combined SEs (3 seeds, the same ground truth) on each
task of the unseen family (``unseen_tasks.FAMILY``: non-convex MLPs on scikit-learn's tabular sets,
plugged in as a user's task).  The pairs measured to fail are listed with the measurement and marked
``xfail(strict=True)``: the day a change makes one pass, the test says so and the entry must go.
``benchmarks/defaults_unseen.py`` runs every applicable method (this file runs the fast ones)."""
from __future__ import annotations

import math

import pytest

from tdabench.engine import pipeline
from tdabench.engine.spec import RunSpec
from unseen_tasks import FAMILY, registered

METHODS = ("gradsim", "tracin", "if", "ekfac", "trak", "source", "datainf")
#: (task, method) → what was measured (benchmarks/defaults_unseen.py, 3 seeds, K=100, R=2).  On the
#: breast-cancer tanh MLP every method that inverts a curvature at a small damping scores at or below
#: random, while gradient similarity, TracIn and SOURCE score 0.56-0.67: there the tuned damping is
#: ≥ 0.3 × λ_max (the gradient-dot-product limit), 30× the default's ratio.
KNOWN_FAILURES = {
    ("cancer-tanh-sgd", "if"): "LDS −0.137 ± 0.037 (−3.3 SEs): the tuned damping is ≥ 0.3 λ_max there",
    ("cancer-tanh-sgd", "ekfac"): "LDS 0.216 ± 0.205 (1.1 SEs): one seed good, two near zero",
}


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict]]:
    """task → method → the LDS summary over 3 seeds (random included)."""
    scratch, out = tmp_path_factory.mktemp("unseen"), {}
    with registered():
        for name, settings in FAMILY:
            spec = RunSpec(task="unseen", methods=("random", *METHODS), seeds=(0, 1, 2), results_dir=scratch,
                           executor="serial", overrides={"task": {k: str(v) for k, v in settings.items()},
                                                         "gt": {"retrain_seeds": "2"}})
            summaries, failures = pipeline.evaluate(spec)
            assert not failures, failures
            out[name] = {s["method"]: s for s in summaries if s["metric"] == "lds"}
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", [name for name, _ in FAMILY])
def test_the_default_beats_random_on_a_task_nobody_tuned_for(board, task, method, request):
    if (task, method) in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[task, method]))
    row, base = board[task][method], board[task]["random"]
    assert len(row["per_seed"]) == 3
    margin = (row["mean"] - base["mean"]) / math.sqrt(row["se"] ** 2 + base["se"] ** 2)
    assert margin > 2, f"{method} on {task}: {row['mean']:.3f} ± {row['se']:.3f} vs random {base['mean']:.3f} ± {base['se']:.3f}"

