"""Ground truth: reproducible masks, resume after interruption, cache keys, Ray = serial."""
from __future__ import annotations

import json

import pytest
import torch

from tdabench.distributed import RayExecutor, SerialExecutor
from tdabench.groundtruth import GroundTruthConfig, GroundTruthStore, build_ground_truth, make_masks, train_and_measure
from tdabench.tasks.regression import Regression, RegressionConfig


class CountingExecutor(SerialExecutor):
    """Serial executor that counts retrains and can fail after ``stop_after`` of them."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.count, self.stop_after = 0, stop_after

    def run(self, task, jobs):
        for item in super().run(task, jobs):
            self.count += 1
            yield item
            if self.stop_after is not None and self.count >= self.stop_after:
                raise KeyboardInterrupt("simulated interruption")


def test_masks_reproducible_by_seed():
    cfg = GroundTruthConfig(alpha=0.3, num_subsets=50)
    a, b, c = make_masks(400, cfg, 7), make_masks(400, cfg, 7), make_masks(400, cfg, 8)
    assert a.shape == (50, 400) and a.dtype == torch.bool
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.float().mean().item() - 0.3) < 0.02


def test_resume_trains_only_missing(tmp_path, small_regression):
    cfg = GroundTruthConfig(num_subsets=10)
    first = CountingExecutor(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        build_ground_truth(small_regression, cfg, 0, tmp_path, first)
    assert first.count == 4
    second = CountingExecutor()
    truth = build_ground_truth(small_regression, cfg, 0, tmp_path, second)
    assert second.count == 6                                  # only the missing subsets
    third = CountingExecutor()
    again = build_ground_truth(small_regression, cfg, 0, tmp_path, third)
    assert third.count == 0 and torch.equal(again.replicas, truth.replicas)
    k = 7                                                     # a resumed piece equals a fresh retrain
    expected = train_and_measure(small_regression, truth.masks[k], _seed_of(0, k, 0))
    torch.testing.assert_close(truth.replicas[0, k], expected)


def _seed_of(seed: int, k: int, r: int) -> int:
    from tdabench.groundtruth import derive_seed

    return derive_seed(seed, k, r)


def test_changed_config_gets_new_cache_and_tampered_meta_fails(tmp_path):
    base = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    other = Regression(RegressionConfig(n_train=30, n_query=5, dim=3, l2=0.1))
    cfg = GroundTruthConfig(num_subsets=5)
    keys = {GroundTruthStore(base, cfg, 0, tmp_path).key, GroundTruthStore(other, cfg, 0, tmp_path).key,
            GroundTruthStore(base, GroundTruthConfig(num_subsets=6), 0, tmp_path).key,
            GroundTruthStore(base, cfg, 1, tmp_path).key}
    assert len(keys) == 4
    store = GroundTruthStore(base, cfg, 0, tmp_path)
    store.prepare()
    meta = json.loads((store.dir / "meta.json").read_text())
    meta["task_version"] = "0-old"
    (store.dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="never reused"):
        GroundTruthStore(base, cfg, 0, tmp_path)


def test_retrain_seeds_are_kept_separately(tmp_path):
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    truth = build_ground_truth(task, GroundTruthConfig(num_subsets=6, retrain_seeds=2), 0, tmp_path, SerialExecutor())
    assert truth.replicas.shape == (2, 6, 5)
    # The regression task trains to a unique optimum: retraining seeds agree, the ceiling is ~1.
    torch.testing.assert_close(truth.replicas[0], truth.replicas[1], atol=1e-5, rtol=1e-5)
    assert truth.noise_ceiling == pytest.approx(1.0, abs=1e-6)


def test_ray_and_serial_give_the_same_ground_truth(tmp_path):
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    cfg = GroundTruthConfig(num_subsets=6)
    serial = build_ground_truth(task, cfg, 3, tmp_path / "serial", SerialExecutor())
    ray_exec = RayExecutor(num_cpus=2)
    try:
        distributed = build_ground_truth(task, cfg, 3, tmp_path / "ray", ray_exec)
    finally:
        ray_exec.close()
    assert torch.equal(serial.masks, distributed.masks)
    torch.testing.assert_close(serial.replicas, distributed.replicas, atol=1e-9, rtol=1e-9)
