"""``--set METHOD.KEY=auto`` (``tdabench.engine.tuning``): chosen on the tuning half only, reported on the
held-out half, recorded with its grid and curve, refused where it cannot mean anything."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tdabench.engine import pipeline
from tdabench.api.config import ConfigError
from tdabench.engine.groundtruth import GroundTruth, load_ground_truth
from tdabench.engine.spec import RunSpec
from tdabench.engine.store import load_scores
from tdabench.engine.tuning import choose, half_lds, heldout_view, split_lds, tuning_view


def _truth(n: int = 40, k: int = 30, q: int = 12, seed: int = 0) -> GroundTruth:
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, n, generator=gen) < 0.5                                  # shape: [K, n]
    effect = torch.randn(n, q, generator=gen)                                      # each example's true effect
    targets = masks.float() @ effect + 0.5 * torch.randn(k, q, generator=gen)      # shape: [K, Q]
    return GroundTruth(masks=masks, replicas=targets[None], key="t", label="synthetic"), effect


def test_the_halves_are_disjoint_and_cover_every_subset_and_query():
    truth, _ = _truth()
    tune, q_tune = tuning_view(truth, seed=3)
    held, q_held = heldout_view(truth, seed=3)
    assert sorted(q_tune.tolist() + q_held.tolist()) == list(range(12))
    rows = {tuple(m.tolist()) for m in tune.masks} | {tuple(m.tolist()) for m in held.masks}
    assert tune.masks.shape[0] + held.masks.shape[0] == 30 and len(rows) == 30
    assert tune.replicas.shape == (1, 15, 6) and held.replicas.shape == (1, 15, 6)


def test_the_choice_never_sees_the_held_out_half():
    """Corrupting every held-out target (subsets and queries of the held-out half) changes neither the
    tuning curve nor the choice; the reported number is the chosen scores' LDS on the held-out half."""
    truth, effect = _truth()
    grid = ("0", "0.5", "1", "3")

    def run(value):   # scores that mix the true effect (the change in the target) with more noise as value grows
        noise = torch.randn(effect.shape, generator=torch.Generator().manual_seed(7))
        return SimpleNamespace(scores=effect + float(value) * noise)

    best, info = choose("noise", grid, run, truth, seed=1)
    held, queries = heldout_view(truth, seed=1)
    corrupted = truth.replicas.clone()
    k_held = [i for i in range(30) if any(torch.equal(truth.masks[i], m) for m in held.masks)]
    for i in k_held:
        corrupted[:, i, queries] = torch.randn(queries.numel())
    again, info_again = choose("noise", grid, run, GroundTruth(truth.masks, corrupted, "t"), seed=1)
    assert info["tuning_lds"] == info_again["tuning_lds"] and info["chosen"] == info_again["chosen"] == "0"
    assert info["tuning_lds"] == sorted(info["tuning_lds"], reverse=True)        # more noise, lower tuning LDS
    assert half_lds(best.scores, (held, queries)) == pytest.approx(split_lds(best.scores, truth, 1)[1])


def test_a_grid_value_the_method_refuses_is_skipped_and_said():
    truth, effect = _truth()

    def run(value):
        if value == "bad":
            raise FloatingPointError("refused here")
        return SimpleNamespace(scores=effect)

    _, info = choose("k", ("bad", "1"), run, truth, seed=0)
    assert info["chosen"] == "1" and info["tuning_lds"][0] is None and "refused here" in info["errors"]["bad"]
    with pytest.raises(FloatingPointError, match="refused here"):
        choose("k", ("bad",), run, truth, seed=0)


def test_run_with_an_auto_damping_records_grid_curve_choice_and_the_held_out_number(tmp_path):
    spec = RunSpec(task="regression", methods=("if",), seeds=(0,), results_dir=tmp_path, executor="serial",
                   overrides={"task": {"n_train": "60", "n_query": "10", "dim": "4"}, "gt": {"num_subsets": "20"},
                              "if": {"relative_damping": "auto"}})
    outcomes: list[pipeline.Outcome] = []
    summaries, failures = pipeline.evaluate(spec, outcomes)
    assert not failures
    record = json.loads(outcomes[0].record.read_text())
    auto = record["extras"]["auto"]
    assert record["method_config"]["relative_damping"] == "auto" and auto["key"] == "relative_damping"
    assert len(auto["grid"]) == len(auto["tuning_lds"]) <= 9
    assert auto["chosen"] == auto["grid"][max(range(len(auto["grid"])), key=lambda i: auto["tuning_lds"][i])]
    # the stored matrix is the chosen value's, and the record's LDS is its held-out half's
    scores, _ = load_scores(outcomes[0].scores)
    plan = pipeline.prepare(spec)
    truth = load_ground_truth(plan.task, plan.gt, 0, tmp_path)
    assert record["metrics"]["lds"]["value"] == pytest.approx(split_lds(scores.float(), truth, 0)[1], abs=1e-6)
    assert record["extras"]["damping_used"] == pytest.approx(
        float(auto["chosen"]) * record["extras"]["max_abs_eigenvalue"], rel=1e-9)
    # a default row is another record (another key), never overwritten by the tuned one
    default = pipeline.record_path(spec.replace(overrides={**spec.overrides, "if": {}}), pipeline.prepare(spec),
                                   pipeline.prepare(spec.replace(overrides={**spec.overrides, "if": {}})).methods[0], 0)
    assert default != outcomes[0].record


@pytest.mark.parametrize("setting, message", [
    ({"gradsim": {"proj_dim": "auto"}}, "proj_dim"),
    ({"if": {"damping": "auto"}}, "relative_damping"),
    ({"if": {"relative_damping": "auto"}, "gt": {"kind": "loo"}}, "gt.kind=subsets"),
])
def test_auto_where_it_cannot_mean_anything_is_refused_naming_the_fix(tmp_path, setting, message):
    methods = tuple(k for k in setting if k != "gt")
    spec = RunSpec(task="regression", methods=methods, results_dir=tmp_path, executor="serial", overrides=setting)
    with pytest.raises(ConfigError, match=message):
        pipeline.prepare(spec)


def test_auto_stays_an_ordinary_value_where_a_setting_takes_it(tmp_path):
    """``ekfac.fisher=auto`` is one of fisher's choices, not a request to tune."""
    spec = RunSpec(task="regression", methods=("ekfac",), results_dir=tmp_path, overrides={"ekfac": {"fisher": "auto"}})
    method = pipeline.prepare(spec).methods[0]
    assert method.auto is None and method.config.fisher == "auto"


def test_every_declared_grid_is_small_and_each_value_is_a_valid_setting():
    from tdabench.api.config import apply_overrides
    from tdabench.api.registry import METHODS
    from tdabench.engine.tuning import MAX_GRID

    declared = 0
    for name in METHODS.names():
        cls = METHODS.get(name)
        for key, grid in cls.tunable.items():
            declared += 1
            assert 2 <= len(grid) <= MAX_GRID and len(set(grid)) == len(grid), (name, key, grid)
            for value in grid:      # the config's own checks accept every value of the grid
                assert str(getattr(apply_overrides(cls.Config(), {key: value}, name), key)).lower() != "auto"
    assert declared >= 15


def test_the_boards_tuned_rows_tune_what_each_method_declares():
    from tdabench.studies.presets import SUITES, TUNED
    from tdabench.api.registry import METHODS

    assert all(key in METHODS.get(m).tunable for m, key in TUNED.items())
    autos = [s for s in SUITES["cpu"].steps if any(x.endswith("=auto") for x in s.sets)]
    assert {(s.task, s.methods[0]) for s in autos} >= {("digits", "if"), ("regression", "if"), ("tinylm", "ekfac")}
