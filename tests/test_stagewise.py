"""``tdabench stagewise``: methods at checkpoints of the reference run against the ground truth measured at
the same points of every retrain."""
from __future__ import annotations

import json

import pytest
import torch

from tdabench import cli
from tdabench.api.config import ConfigError
from tdabench.engine.pipeline import evaluate
from tdabench.engine.spec import RunSpec
from tdabench.studies.stagewise import pair_correlations, stagewise

DIGITS = {"task": {"n_train": "64", "n_query": "12", "hidden": "8", "epochs": "3", "batch_size": "16"},
          "gt": {"num_subsets": "8"}}


def _spec(tmp_path, methods=("gradsim",), **gt) -> RunSpec:
    overrides = {**DIGITS, "gt": {**DIGITS["gt"], **{k: str(v) for k, v in gt.items()}}}
    return RunSpec(task="digits", methods=methods, seeds=(0, 1), overrides=overrides, results_dir=tmp_path,
                   executor="serial")


def test_the_last_checkpoint_is_the_ordinary_evaluation(tmp_path):
    """At checkpoint C of C the model is the reference model and the targets are the retrains' ends:
    LDS(t_C) equals the end-of-training LDS; earlier checkpoints differ, and each is its own row."""
    report = stagewise(_spec(tmp_path, checkpoints=3))
    assert not report["failures"] and report["steps"] == [4, 8, 12]
    lds = {r["checkpoint"]: r["per_seed"] for r in report["rows"]}
    end, _ = evaluate(_spec(tmp_path / "end"))
    assert lds[3] == pytest.approx(end[0]["per_seed"], abs=1e-5)
    assert lds[1] != pytest.approx(lds[3], abs=1e-3)
    assert len({r["ground_truth"] for r in report["rows"]}) == 3
    from tdabench.engine.verify import is_stale
    from tdabench.engine.records import RunResult

    records = [RunResult.load(p) for p in (tmp_path / "runs").glob("digits/gradsim/*/seed*.json")]
    assert len(records) == 6 and not any(is_stale(r, "lds") for r in records)     # 3 checkpoints × 2 seeds
    saved = json.loads((tmp_path / "stagewise" / "digits.json").read_text())
    assert len(saved["rows"]) == 3 and (tmp_path / "stagewise" / "digits.png").stat().st_size > 1000


def test_pair_correlation_of_identical_and_opposite_trajectories():
    t = torch.linspace(0, 1, 6)[:, None, None] * torch.randn(1, 3, 2)             # shape: [C, m, q]
    torch.testing.assert_close(pair_correlations(t, 2 * t + 1), torch.ones(3, 2, dtype=torch.float64))
    torch.testing.assert_close(pair_correlations(t, -t), -torch.ones(3, 2, dtype=torch.float64))


def test_checkpoint_evaluation_refuses_what_it_cannot_do(tmp_path, capsys):
    with pytest.raises(ConfigError, match="gt.checkpoints=5"):
        evaluate(_spec(tmp_path).replace(at_checkpoint=2))
    with pytest.raises(ConfigError, match="drop source"):
        evaluate(_spec(tmp_path, methods=("source",), checkpoints=3).replace(at_checkpoint=2))
    args = ["stagewise", "--task", "digits", "--method", "gradsim", "--checkpoints", "1", "--results-dir", str(tmp_path)]
    assert cli.main(args) == 2 and "--checkpoints 1" in capsys.readouterr().err


def test_hierarchy_loo_trajectories_pairs_and_mds(tmp_path):
    """On hierarchy (LOO over 6 checkpoints): the pair correlations cover every (removed, query) pair of
    every seed, and the pair and MDS figures are written; an item's LOO effect on its sibling flips
    sign during training (helpful while the coarse split is learned, harmful at the fine split)."""
    spec = RunSpec(task="hierarchy", methods=("gradsim",), seeds=(0, 1), results_dir=tmp_path, executor="serial",
                   overrides={"gt": {"kind": "loo", "checkpoints": "12"}})
    report = stagewise(spec)
    assert not report["failures"] and report["pair_correlation"]["gradsim"]["pairs"] == 2 * 8 * 8
    for name in ("hierarchy-pairs.png", "hierarchy-mds.png", "hierarchy.png"):
        assert (tmp_path / "stagewise" / name).stat().st_size > 1000
    from tdabench.engine.groundtruth import GroundTruthConfig, load_ground_truth
    from tdabench.tasks.hierarchy import Hierarchy

    truth = load_ground_truth(Hierarchy(), GroundTruthConfig(kind="loo", checkpoints=12), 0, tmp_path)
    mean = truth.trajectory.mean(0)                                      # shape: [K, C, Q]
    sibling = mean[0, :, 1] - mean[1, :, 1]                             # including item 0, on query 1 (its sibling)
    assert sibling.min() < -1e-3 and sibling.max() > 1e-3


def test_flip_and_peak_times():
    from tdabench.studies.stagewise import flip_times, timing_agreement

    t = torch.arange(8.0)[:, None]
    down_up = torch.tensor([[-1, -2, -3, -1, 0.5, 2, 3, 1], [0, 0, 1, 2, 3, 2, 1, 0]]).T   # flips at 4; never
    assert flip_times(down_up).tolist() == [4, -1]
    assert flip_times(torch.zeros(8, 1)).tolist() == [-1]                           # no clear sign at all
    effects = torch.sin(t / 2)[:, :, None].expand(8, 3, 2)                          # flips after step 6
    same = timing_agreement(3 * effects, effects)
    assert same == {"peak_agreement": 1.0, "flip_pairs": 6, "flip_agreement": 1.0}
    late = timing_agreement(torch.roll(effects, 3, 0), effects)
    assert late["flip_agreement"] == 0.0 and late["flip_pairs"] == 6


def test_stagewise_recomputes_a_record_whose_score_matrix_is_not_stored(tmp_path):
    # records are committed, score matrices are not: on a fresh clone the pair trajectories found no scores
    spec = RunSpec(task="hierarchy", methods=("gradsim",), seeds=(0,), results_dir=tmp_path, executor="serial",
                   overrides={"gt": {"kind": "loo", "checkpoints": "3"}})
    first = stagewise(spec)["pair_correlation"]["gradsim"]
    for scores in (tmp_path / "runs").rglob("*.scores.pt"):
        scores.unlink()
    again = stagewise(spec)
    assert not again["failures"] and again["pair_correlation"]["gradsim"]["median"] == first["median"]
    assert len(list((tmp_path / "runs").rglob("*.scores.pt"))) == 3
