"""Mislabel detection (gt.kind=mislabel): the seeded flips, the self-influence path against the full score
matrix's diagonal, the metric against scikit-learn's ROC-AUC and its limit cases, a run end to end, and
the refusals before any work."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import make_context
from tdabench import cli
from tdabench.toolkit import labelnoise
from tdabench.engine.groundtruth import GroundTruth
from tdabench.metrics.mislabel import Mislabel, roc_auc
from tdabench.engine.spec import make_method
from tdabench.tasks.digits import Digits, DigitsConfig


def test_roc_auc_is_scikit_learns_with_ties():
    gen = np.random.default_rng(0)
    positive = gen.random(200) < 0.1
    suspicion = np.round(gen.normal(size=200) + positive, 1)                   # rounded: many ties
    assert roc_auc(suspicion, positive) == pytest.approx(roc_auc_score(positive, suspicion), abs=1e-12)


def test_the_metric_at_its_limits():
    """Flipped examples with the most negative self-influence: AUC 1 and all found in the first 10 %; the
    reverse order: AUC 0 and none found in the first 20 %."""
    flipped = labelnoise.flipped_mask(100, 0.1, 0)
    truth = GroundTruth(masks=flipped[None], replicas=torch.zeros(1, 1, 0), key="k", kind="mislabel")
    best = Mislabel().compute(torch.where(flipped, -5.0, -1.0)[:, None], truth)
    worst = Mislabel().compute(torch.where(flipped, -1.0, -5.0)[:, None], truth)
    assert best.value == 1.0 and best.details["found_at_10"] == 1.0
    assert worst.value == 0.0 and worst.details["found_at_20"] == 0.0


def test_flips_are_seeded_and_each_label_moves_to_another_class():
    task = Digits(DigitsConfig(n_train=200, n_query=20))
    labelnoise.mark(task, 0.1)
    clean = task.train_data()[1].clone()
    mask = labelnoise.corrupt(task, 0.1, seed=3)
    noisy = task.train_data()[1].clone()
    assert int(mask.sum()) == 20 and torch.equal(mask, labelnoise.flipped_mask(200, 0.1, 3))
    assert bool((noisy[mask] != clean[mask]).all()) and torch.equal(noisy[~mask], clean[~mask])
    other = labelnoise.corrupt(task, 0.1, seed=4)                   # another seed flips from the clean labels
    assert not torch.equal(other, mask) and torch.equal(task.train_data()[1][~other], clean[~other])
    assert task.describe()["label_noise"] == {"fraction": 0.1}


def test_self_influence_in_blocks_is_the_full_matrix_diagonal(tmp_path):
    task = Digits(DigitsConfig(n_train=60, n_query=5, epochs=3))
    ctx = make_context(task, tmp_path)
    for name in ("gradsim", "if"):
        method = make_method(name, task, {})
        own, _, _ = labelnoise.self_influence(method, ctx, block=7)               # 9 blocks, the last short
        full = make_method(name, task, {}).score(dataclasses.replace(ctx, query_data=task.train_data()))
        torch.testing.assert_close(own, full.diagonal(), rtol=1e-4, atol=1e-6)


def test_a_run_finds_the_flipped_labels_and_random_does_not(tmp_path, capsys):
    assert cli.main(["run", "--task", "digits", "--method", "gradsim,random", "--results-dir", str(tmp_path / "r"),
                     "--serial", "--json", "--set", "gt.kind=mislabel", "--set", "task.n_train=400",
                     "--set", "task.epochs=10"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gradsim"]["mean"] > 0.9
    assert 0.35 < rows["random"]["mean"] < 0.65
    record = json.loads(next((tmp_path / "r" / "runs" / "digits" / "gradsim").rglob("seed0.json")).read_text())
    assert record["ground_truth"]["kind"] == "mislabel" and set(record["metrics"]["mislabel"]["details"]) == {
        "found_at_10", "found_at_20"}
    assert not (tmp_path / "r" / "ground_truth").exists()                      # nothing was retrained


@pytest.mark.parametrize("sets,needle", [
    (["task"], "gt.kind=mislabel flips class labels"),                         # a regression task
    (["gt.mislabel_fraction=0.6"], "gt.mislabel_fraction=0.6"),
    (["gt.checkpoints=3"], "drop gt.order and gt.checkpoints"),
])
def test_bad_settings_fail_before_any_work_naming_the_field(sets, needle, tmp_path, capsys):
    task = "regression" if sets == ["task"] else "digits"
    extra = [] if sets == ["task"] else [a for s in sets for a in ("--set", s)]
    code = cli.main(["run", "--task", task, "--method", "gradsim", "--results-dir", str(tmp_path / "r"), "--serial",
                     "--set", "gt.kind=mislabel", *extra])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and needle in err
    assert not (tmp_path / "r" / "models").exists()
