"""Sweeps: disjoint tuning/held-out splits and a real (small) Ray Tune run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tdabench.api.config import parse_set_args
from tdabench.engine.spec import RunSpec
from tdabench.studies.sweep import SweepSpec, parse_grid, split, sweep


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
    best = max(report["trials"], key=lambda t: t["tune"])
    assert report["chosen"] == best["config"]
    assert -1.0 <= report["heldout"] <= 1.0
    saved = json.loads(Path(report["path"]).read_text())
    assert saved["chosen"] == report["chosen"] and "heldout" not in saved["trials"][0]


def test_a_leave_one_out_sweep_along_training_ranks_by_pair_trajectories_of_split_pairs(tmp_path):
    """gt.kind=loo with checkpoints: a trial's tuning and held-out numbers are the medians, over the two
    halves of the pairs, of the same pair correlations `stagewise` computes from its stored scores."""
    import pytest

    from tdabench.api.config import ConfigError
    from tdabench.studies.stagewise import _loo_effects, _trajectory_of, pair_correlations, stagewise
    from tdabench.engine.spec import prepare
    from tdabench.studies.sweep import _prepare, _trial

    gt = ["gt.kind=loo", "gt.checkpoints=4", "task.steps=300"]
    run = RunSpec(task="hierarchy", methods=("gradsim",), seeds=(0, 1), results_dir=tmp_path, executor="serial",
                  overrides=parse_set_args(gt))
    truths = _prepare(SweepSpec(run=run, grid={"normalize": ("true",)}))
    trial = _trial({"normalize": "true"}, run, truths)
    same = run.replace(overrides=parse_set_args([*gt, "gradsim.normalize=true"]))
    stagewise(same)
    plan = prepare(same)
    for seed, held in zip((0, 1), trial["heldout_per_seed"]):
        removed, effects = _loo_effects(same, plan, seed)
        r = pair_correlations(_trajectory_of(same, plan, plan.methods[0], seed, 4)[:, removed], effects).flatten()
        assert held == pytest.approx(float(r[split(r.numel(), seed, 0xC0A)[1]].nanmedian()), abs=1e-6)
    assert trial["heldout"] == pytest.approx(sum(trial["heldout_per_seed"]) / 2)
    assert -1 <= trial["tune"] <= 1 and trial["tune"] != trial["heldout"]
    with pytest.raises(ConfigError, match="gt.checkpoints"):
        _prepare(SweepSpec(run=run.replace(overrides=parse_set_args(["gt.kind=loo"])), grid={"normalize": ("true",)}))


def test_a_cuda_sweep_checks_every_trial_with_the_trials_that_share_its_gpu(monkeypatch, tmp_path):
    """Tune puts 1/num_gpus_per_retrain trials on a GPU at once: before any work, each combination of the
    grid is planned with that many copies of its method's stages on the device (checked on the CPU path,
    with a device that fits one trial's scoring but not four)."""
    from types import SimpleNamespace

    from tdabench.api.config import ConfigError
    from tdabench.api.truth import GroundTruthConfig
    from tdabench.engine import pipeline
    from tdabench.engine.spec import RunSpec, make_method, make_task
    from tdabench.plan import capacity
    from tdabench.plan.costplan import trace
    from tdabench.studies import sweep as sweeps

    overrides = {"task": {"n_train": "300"}}
    make = lambda d: make_task("digits", overrides["task"], d)   # noqa: E731
    cuda = SimpleNamespace(device=torch.device("cuda"), num_gpus_per_retrain=0.25)
    method = make_method("gradsim", make(torch.device("cpu")), {})
    cost = {s.stage: s for s in trace(make, [method], GroundTruthConfig(), "cuda").stages}
    score = cost["gradsim score"].peak_bytes
    largest = max([s.peak_bytes for s in cost.values()] + [2 * score])   # fits every stage, scoring twice over
    assert largest < 4 * score                                            # but not four trials' scoring
    monkeypatch.setattr(pipeline, "device_memory", lambda device: largest + capacity.CUDA_HEADROOM)
    spec = RunSpec(task="digits", methods=("gradsim",), overrides=overrides, results_dir=tmp_path)
    plan = SimpleNamespace(task=cuda, methods=[method], gt=GroundTruthConfig())
    pipeline.check_memory(spec, plan)                                # one trial fits
    seen = []
    monkeypatch.setattr(sweeps, "prepare", lambda trial: seen.append(trial.overrides["gradsim"]) or plan)
    sweep = sweeps.SweepSpec(run=spec, grid={"proj_dim": ("0", "64"), "batch_size": ("32",)})
    with pytest.raises(ConfigError, match=r"sweep trial \{'proj_dim': '0', 'batch_size': '32'\} \(4 trials a GPU\).*"
                                          r"gradsim score.*× 4 sharing the GPU"):
        sweeps._check_trials_memory(sweep, plan)
    assert seen == [{"proj_dim": "0", "batch_size": "32"}]          # refused at the first combination
    sweeps._check_trials_memory(sweeps.SweepSpec(run=spec.replace(check_memory=False), grid=sweep.grid), plan)
