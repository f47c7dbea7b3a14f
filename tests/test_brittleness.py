"""Brittleness (gt.kind=brittleness): the margin against hand-computed logits, which queries count and flip,
each retrain's margin against the same retrain done by hand, worker processes measuring margins too, and
the refusals before any work."""
from __future__ import annotations

import json

import pytest
import torch

from tdabench import cli
from tdabench.engine.distributed import ProcessExecutor, SerialExecutor
from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth
from tdabench.tasks.digits import Digits, DigitsConfig
from tdabench.toolkit.brittleness import flips, margin, measuring_margins
from tdabench.toolkit.retrain import retrain_seed, train_and_measure


class Logits(torch.nn.Module):
    def forward(self, x):
        return x


def test_the_margin_is_the_labels_logit_minus_the_largest_other():
    task = Digits(DigitsConfig(n_train=20, n_query=5))
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, -4.0]])
    got = margin(task, Logits(), (logits, torch.tensor([0, 2, 1])))
    torch.testing.assert_close(got, torch.tensor([1.0, -2.0, 0.0]))        # correct; wrong by 2; a tie is no margin
    from tdabench.tasks.regression import Regression, RegressionConfig      # one logit: (2y − 1)·z
    binary = Regression(RegressionConfig(n_train=10, n_query=3, dim=2))
    torch.testing.assert_close(margin(binary, Logits(), (torch.tensor([1.5, -0.5, 2.0]), torch.tensor([1.0, 1.0, 0.0]))),
                               torch.tensor([1.5, -0.5, -2.0]))


def test_flips_count_only_queries_the_full_model_gets_right():
    # R=2 seeds, Q=2 followed queries × F=2 fractions, 3 queries measured; query 2 is wrong on the full model
    replicas = torch.zeros(2, 1 + 2 * 2, 3)
    replicas[:, 0] = torch.tensor([1.0, -5.0, 2.0])           # full model: query 0 right, 1 wrong, 2 right
    replicas[:, 1:, 0] = torch.tensor([[0.5, -0.1, 9, 9], [0.3, -0.3, 9, 9]])   # query 0: flips at the 2nd fraction
    replicas[:, 1:, 2] = torch.tensor([[9, 9, 1.0, 0.5], [9, 9, 1.0, -0.4]])   # query 2: mean 0.05 > 0: no flip
    correct, flipped = flips(replicas, torch.tensor([0, 2]), 2)
    assert correct.tolist() == [True, True]
    assert flipped.tolist() == [[False, True], [False, False]]
    correct, _ = flips(replicas, torch.tensor([1, 2]), 2)
    assert correct.tolist() == [False, True]


def test_the_task_measures_margins_inside_the_block_and_its_loss_after():
    task = Digits(DigitsConfig(n_train=40, n_query=6))
    model = task.make_model(0)
    loss = task.measure(model, task.query_data())
    with measuring_margins(task):
        inside = task.measure(model, task.query_data())
    torch.testing.assert_close(inside, margin(task, model.eval(), task.query_data()))
    torch.testing.assert_close(task.measure(model, task.query_data()), loss)
    assert "measurement" not in vars(task)


def test_each_retrain_is_the_margin_of_that_retrain_done_by_hand_in_any_executor(tmp_path):
    """The ground truth's margins equal a retrain by hand (same mask, same common seed) measured by margin;
    two worker processes (which rebuild the task from its name) give the same numbers as this process."""
    task = Digits(DigitsConfig(n_train=80, n_query=10, epochs=5))
    cfg = GroundTruthConfig(kind="brittleness", removal_queries=3, removal_fractions=(0.05, 0.25))
    scores = torch.randn(80, 10, generator=torch.Generator().manual_seed(0))
    serial = build_ground_truth(task, cfg, 0, tmp_path / "a", SerialExecutor(), scores=scores)
    assert serial.kind == "brittleness" and serial.replicas.shape == (1, 1 + 3 * 2, 10)
    for row in (0, 4):
        with measuring_margins(task):
            by_hand = train_and_measure(task, serial.masks[row], retrain_seed(0, row, 0, common=True))
        torch.testing.assert_close(serial.replicas[0, row], by_hand, rtol=1e-5, atol=1e-5)
    workers = build_ground_truth(task, cfg, 0, tmp_path / "b", ProcessExecutor(workers=2), scores=scores)
    torch.testing.assert_close(workers.replicas, serial.replicas, rtol=1e-5, atol=1e-5)
    loss = build_ground_truth(task, GroundTruthConfig(kind="removal", removal_queries=3, removal_fractions=(0.05, 0.25)),
                              0, tmp_path / "a", SerialExecutor(), scores=scores)
    assert loss.key != serial.key and (loss.replicas >= 0).all()                     # removal's losses, kept apart


def test_a_run_records_the_share_flipped_and_the_smallest_fraction(tmp_path, capsys):
    args = ["run", "--task", "digits", "--method", "gradsim,random", "--seeds", "1", "--serial", "--json",
            "--results-dir", str(tmp_path / "r"), "--set", "task.n_train=200", "--set", "task.n_query=20",
            "--set", "gt.kind=brittleness", "--set", "gt.removal_queries=6", "--set", "gt.removal_fractions=0.02,0.1,0.3"]
    assert cli.main(args) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"gradsim", "random"} and rows["gradsim"]["metric"] == "brittleness"
    record = json.loads(next((tmp_path / "r" / "runs" / "digits" / "gradsim").rglob("seed0.json")).read_text())
    details = record["metrics"]["brittleness"]["details"]
    curve = [details["curve"][k] for k in ("0.02", "0.1", "0.3")]
    assert all(0 <= c <= 1 for c in curve) and details["at_fraction"] == 0.02      # the nearest to 5 %
    counted = [v for v in record["metrics"]["brittleness"]["per_query"] if v is not None]
    assert len(counted) == details["counted"] <= 6 and record["metrics"]["brittleness"]["value"] == pytest.approx(
        sum(counted) / len(counted)) == pytest.approx(curve[0])
    smallest = [s for s in details["smallest_fraction"] if s is not None]
    assert all(s in (0.02, 0.1, 0.3) for s in smallest)
    from tdabench.engine.records import RunResult
    from tdabench.engine.reproduce import current_codes, stale
    from tdabench.engine.verify import is_stale
    fresh = RunResult.load(next((tmp_path / "r" / "runs" / "digits" / "gradsim").rglob("seed0.json")))
    assert not stale(fresh, current_codes(fresh)) and not is_stale(fresh, "brittleness")   # both checks: current


@pytest.mark.parametrize("args,needle", [
    (["--task", "regression", "--set", "task.kind=linear"], "needs class labels"),
    (["--task", "digits", "--set", "gt.kind=brittleness", "--set", "gt.order=reference"], "drop gt.order"),
])
def test_what_cannot_flip_is_refused_before_any_work(args, needle, tmp_path, capsys):
    code = cli.main(["run", *args, "--method", "gradsim", "--set", "gt.kind=brittleness", "--serial",
                     "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and needle in err
    assert not (tmp_path / "r" / "ground_truth").exists() and not (tmp_path / "r" / "models").exists()
