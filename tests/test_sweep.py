"""Sweeps: disjoint tuning/held-out splits and a real (small) Ray Tune run."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tdabench.config import parse_set_args
from tdabench.spec import RunSpec
from tdabench.sweep import SweepSpec, parse_grid, split, sweep


def test_splits_are_disjoint_complete_and_seeded():
    tune, held = split(101, seed=3, salt=1)
    assert set(tune.tolist()).isdisjoint(held.tolist())
    assert sorted(tune.tolist() + held.tolist()) == list(range(101))
    assert torch.equal(split(101, 3, 1)[0], tune) and not torch.equal(split(101, 4, 1)[0], tune)


def test_sweep_ranks_on_tuning_split_and_reports_held_out(tmp_path):
    run = RunSpec(task="regression", methods=("if",), seeds=(0,), results_dir=tmp_path, executor="serial",
                  overrides=parse_set_args(["gt.num_subsets=20", "task.n_train=40"]))
    report = sweep(SweepSpec(run=run, grid=parse_grid(["if.damping=0.001,1000"], "if")))
    assert len(report["trials"]) == 2 and report["failures"] == []
    best = max(report["trials"], key=lambda t: t["tune_lds"])
    assert report["chosen"] == best["config"]
    assert -1.0 <= report["heldout_lds"] <= 1.0
    saved = json.loads(Path(report["path"]).read_text())
    assert saved["chosen"] == report["chosen"] and "heldout_lds" not in saved["trials"][0]
