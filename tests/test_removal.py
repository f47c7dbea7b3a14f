"""Top-k removal counterfactuals (gt.kind=removal): the masks a score matrix names, the rises read off the
retrains, the exact influence function's prediction against retraining on a convex task, resuming after a
crash without redoing a finished retrain, and the refusals before any work."""
from __future__ import annotations

import json

import pytest
import torch

from tdabench import cli
from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth
from tdabench.toolkit.removal import predicted_rises, removal_masks, removal_queries, rises
from tdabench.toolkit.retrain import train_and_measure
from tdabench.tasks.regression import Regression, RegressionConfig


def test_each_row_drops_exactly_the_queries_top_k_helpful_examples():
    scores = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    queries, fractions = torch.tensor([1, 4]), (0.02, 0.1, 0.3)
    masks = removal_masks(scores, queries, fractions)
    assert masks.shape == (1 + 2 * 3, 50) and bool(masks[0].all())
    for a, q in enumerate(queries.tolist()):
        for b, k in enumerate((1, 5, 15)):
            dropped = (~masks[1 + a * 3 + b]).nonzero().squeeze(1)
            assert len(dropped) == k and set(dropped.tolist()) == set(scores[:, q].argsort()[:k].tolist())
    assert torch.equal(removal_queries(30, 5, seed=2), removal_queries(30, 5, seed=2))
    assert not torch.equal(removal_queries(30, 5, seed=2), removal_queries(30, 5, seed=3))


def test_rises_are_each_querys_own_measurement_against_the_full_model():
    gen = torch.Generator().manual_seed(1)
    replicas = torch.randn(2, 1 + 3 * 2, 7, generator=gen)                  # R=2, Q=3 queries × F=2, 7 queries measured
    queries = torch.tensor([0, 3, 6])
    got = rises(replicas, queries, 2)
    for a, q in enumerate(queries.tolist()):
        for b in range(2):
            expected = (replicas[:, 1 + a * 2 + b, q] - replicas[:, 0, q]).mean()
            torch.testing.assert_close(got[a, b], expected)
    scores = torch.randn(40, 7, generator=gen)
    top = scores[:, 3].argsort()[:4]
    assert predicted_rises(scores, torch.tensor([3]), (0.1,))[0, 0] == pytest.approx(-float(scores[top, 3].sum()), rel=1e-6)


def test_the_exact_influence_function_predicts_the_retrained_rise_on_a_convex_task(tmp_path, capsys):
    """Regression trained to its optimum: −Σ of the removed exact-IF scores against the retrained rise of each
    followed query, Pearson over queries at k = 1 % (the issue's bar: > 0.95); random removal raises nothing."""
    assert cli.main(["run", "--task", "regression", "--method", "if,random", "--results-dir", str(tmp_path / "r"),
                     "--serial", "--json", "--set", "gt.kind=removal", "--set", "if.curvature=hessian",
                     "--set", "if.damping=0"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    record = json.loads(next((tmp_path / "r" / "runs" / "regression" / "if").rglob("seed0.json")).read_text())
    details, per_query = record["metrics"]["removal"]["details"], record["metrics"]["removal"]["per_query"]
    assert details["predicted_pearson"]["0.01"] > 0.95
    assert len(per_query) == record["task_config"]["n_query"]                 # one entry per query, as verify expects
    assert [i for i, v in enumerate(per_query) if v is not None] == details["queries"]
    assert rows["if"]["mean"] > 10 * abs(rows["random"]["mean"])
    from tdabench.report.site import build
    page = build(tmp_path / "r").read_text()
    assert 'id="removal-regression"' in page and "top-k helpful examples removed" in page   # the curve is on the site


class Crashing:
    """An executor that trains one retrain at a time in this process and dies after ``limit`` of them."""

    def __init__(self, limit: int = 10**9) -> None:
        self.limit, self.trained = limit, 0

    def run(self, task, jobs, chunk=0, order="independent", checkpoints=0):
        for k, r, mask, seed in jobs:
            if self.trained == self.limit:
                raise KeyboardInterrupt("killed")
            self.trained += 1
            yield k, r, train_and_measure(task, mask, seed)


def test_an_interrupted_build_resumes_without_redoing_a_finished_retrain(tmp_path):
    task = Regression(RegressionConfig(n_train=60, n_query=8, dim=4))
    cfg = GroundTruthConfig(kind="removal", removal_queries=3, removal_fractions=(0.05, 0.2))
    scores = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KeyboardInterrupt):
        build_ground_truth(task, cfg, 0, tmp_path, Crashing(limit=4), scores=scores)
    second = Crashing()
    truth = build_ground_truth(task, cfg, 0, tmp_path, second, scores=scores)
    assert second.trained == 1 + 3 * 2 - 4 and truth.replicas.shape == (1, 7, 8)
    other = build_ground_truth(task, cfg, 0, tmp_path, Crashing(), scores=-scores)   # other scores: other retrains
    assert other.key != truth.key and torch.equal(other.replicas[:, 0], truth.replicas[:, 0])  # same seeds, same full model


@pytest.mark.parametrize("args,needle", [
    (["ground-truth", "--task", "regression", "--set", "gt.kind=removal"], "use `tdabench run --method NAME"),
    (["run", "--task", "regression", "--method", "gradsim", "--set", "gt.kind=removal",
      "--set", "gt.removal_fractions=0.1,1.5"], "gt.removal_fractions=0.1,1.5"),
    (["run", "--task", "regression", "--method", "gradsim", "--set", "gt.kind=removal",
      "--set", "task.n_train=20", "--set", "gt.removal_fractions=0.98"], "removes every one"),
])
def test_bad_settings_fail_before_any_work_naming_the_field(args, needle, tmp_path, capsys):
    code = cli.main([*args, "--results-dir", str(tmp_path / "r"), "--serial"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and needle in err
    assert not (tmp_path / "r" / "ground_truth").exists() and not (tmp_path / "r" / "models").exists()
