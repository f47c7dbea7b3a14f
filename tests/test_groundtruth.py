"""Ground truth: reproducible masks, resume after interruption, cache keys, Ray = serial."""
from __future__ import annotations

import json

import pytest
import torch

from tdabench.engine.distributed import RayExecutor, SerialExecutor
from tdabench.toolkit.lds import noise_ceiling
from tdabench.engine.groundtruth import GroundTruthConfig, GroundTruthStore, build_ground_truth, check_config, make_masks
from tdabench.toolkit.retrain import train_and_measure
from tdabench.tasks.regression import Regression, RegressionConfig


class CountingExecutor(SerialExecutor):
    """Serial executor that counts retrains and can fail after ``stop_after`` of them."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.count, self.stop_after = 0, stop_after

    def run(self, task, jobs, chunk=0, order="independent", checkpoints=0):
        for item in super().run(task, jobs, chunk, order, checkpoints):
            self.count += 1
            yield item
            if self.stop_after is not None and self.count >= self.stop_after:
                raise KeyboardInterrupt("simulated interruption")


def test_masks_reproducible_by_seed():
    cfg = GroundTruthConfig(alpha=0.3, num_subsets=50)
    a, b, c = make_masks(400, cfg, 7)[0], make_masks(400, cfg, 7)[0], make_masks(400, cfg, 8)[0]
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
    from tdabench.api.seeds import derive_seed

    return derive_seed(seed, k, r)


def test_changed_config_gets_new_cache(tmp_path):
    base = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    other = Regression(RegressionConfig(n_train=30, n_query=5, dim=3, l2=0.1))
    cfg = GroundTruthConfig(num_subsets=5)
    keys = {GroundTruthStore(base, cfg, 0, tmp_path).key, GroundTruthStore(other, cfg, 0, tmp_path).key,
            GroundTruthStore(base, GroundTruthConfig(num_subsets=6), 0, tmp_path).key,
            GroundTruthStore(base, cfg, 1, tmp_path).key,
            GroundTruthStore(base, GroundTruthConfig(num_subsets=5, alpha=0.99), 0, tmp_path).key,
            GroundTruthStore(base, GroundTruthConfig(kind="loo"), 0, tmp_path).key}
    assert len(keys) == 6
    # knobs of the other kind do not split the cache
    assert GroundTruthStore(base, GroundTruthConfig(kind="loo", alpha=0.3), 0, tmp_path).key == \
        GroundTruthStore(base, GroundTruthConfig(kind="loo"), 0, tmp_path).key


def test_ground_truth_made_by_other_code_is_set_aside_and_rebuilt(tmp_path, caplog):
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    cfg = GroundTruthConfig(num_subsets=5)
    first = build_ground_truth(task, cfg, 0, tmp_path, CountingExecutor())
    store = GroundTruthStore(task, cfg, 0, tmp_path)
    meta = json.loads((store.dir / "meta.json").read_text())
    meta["code"]["tdabench.tasks.regression"] = "0" * 16          # as if the recipe had been edited
    (store.dir / "meta.json").write_text(json.dumps(meta))
    counting = CountingExecutor()
    with caplog.at_level("WARNING", logger="tdabench"):
        again = build_ground_truth(task, cfg, 0, tmp_path, counting)
    assert counting.count == 5                                    # rebuilt, not reused
    assert "built by other code" in caplog.text and "changed: tdabench.tasks.regression" in caplog.text
    assert store.dir.with_name(store.dir.name + ".stale0").exists()   # kept, not deleted
    torch.testing.assert_close(again.replicas, first.replicas)


def test_leave_one_out_masks_and_common_seeds(tmp_path):
    task = Regression(RegressionConfig(n_train=12, n_query=4, dim=3))
    truth = build_ground_truth(task, GroundTruthConfig(kind="loo", loo_examples=5), 0, tmp_path, SerialExecutor())
    assert truth.masks.shape == (6, 12) and truth.masks[0].all()
    assert truth.removed.shape == (5,) and len(set(truth.removed.tolist())) == 5
    for k, i in enumerate(truth.removed.tolist()):
        assert (~truth.masks[1 + k]).nonzero().flatten().tolist() == [i]
    every = build_ground_truth(task, GroundTruthConfig(kind="loo"), 0, tmp_path, SerialExecutor())
    assert torch.equal(every.removed, torch.arange(12))


def test_retrain_seeds_are_kept_separately(tmp_path):
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    truth = build_ground_truth(task, GroundTruthConfig(num_subsets=6, retrain_seeds=2), 0, tmp_path, SerialExecutor())
    assert truth.replicas.shape == (2, 6, 5)
    # The regression task trains to a unique optimum: retraining seeds agree, the ceiling is ~1.
    torch.testing.assert_close(truth.replicas[0], truth.replicas[1], atol=1e-5, rtol=1e-5)
    assert noise_ceiling(truth.replicas) == pytest.approx(1.0, abs=1e-6)


def _serial_and_ray(task, cfg, seed, root):
    """The same ground truth built in-process and on a local 2-CPU Ray instance."""
    serial = build_ground_truth(task, cfg, seed, root / "serial", SerialExecutor())
    ray_exec = RayExecutor(num_cpus=2)
    try:
        return serial, build_ground_truth(task, cfg, seed, root / "ray", ray_exec)
    finally:
        ray_exec.close()


def test_ray_and_serial_give_the_same_ground_truth(tmp_path):
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    serial, distributed = _serial_and_ray(task, GroundTruthConfig(num_subsets=6), 3, tmp_path)
    assert torch.equal(serial.masks, distributed.masks)
    torch.testing.assert_close(serial.replicas, distributed.replicas, atol=1e-9, rtol=1e-9)


def test_batched_retrains_equal_the_one_model_path_with_unequal_subsets():
    """digits trains many models at once; each gives the one-model retrain's measurements (same
    init, data order and Adam) to float tolerance, whatever the sizes of the subsets sharing a batch."""
    from tdabench.tasks.digits import Digits, DigitsConfig

    task = Digits(DigitsConfig(n_train=300, n_query=40, epochs=3))
    assert task.trains_many
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([torch.rand(300, generator=gen) < a for a in (0.1, 0.5, 0.9, 0.33)])   # 4 sizes
    seeds = [11, 12, 13, 14]
    many = task.train_many(masks, seeds)
    one = torch.stack([train_and_measure(task, m, s) for m, s in zip(masks, seeds)])
    assert many.shape == (4, 40)
    torch.testing.assert_close(many, one, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(one[0], one[1], atol=1e-3)        # the models really differ


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_batched_regression_gd_equals_the_one_model_path(kind):
    """regression with full-batch GD trains many models at once (each its own initialisation and
    subset, four sizes in one batch) with the one-model path's measurements; L-BFGS does not."""
    task = Regression(RegressionConfig(kind=kind, n_train=60, n_query=8, dim=4, optimizer="gd", steps=40, lr=0.5))
    assert task.trains_many and not Regression(RegressionConfig(optimizer="lbfgs")).trains_many
    gen = torch.Generator().manual_seed(1)
    masks = torch.stack([torch.rand(60, generator=gen) < a for a in (0.1, 0.5, 0.9, 0.33)])
    seeds = [5, 6, 7, 8]
    many = task.train_many(masks, seeds)
    one = torch.stack([train_and_measure(task, m, s) for m, s in zip(masks, seeds)])
    torch.testing.assert_close(many, one, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(one[0], one[1], atol=1e-3)


def test_batched_hierarchy_equals_the_one_model_path():
    """hierarchy (full-batch GD on the tree's items, each weighted 1/N) trains many models at once:
    subsets of four sizes in one batch give the one-model retrain's measurements."""
    from tdabench.tasks.hierarchy import Hierarchy, HierarchyConfig

    task = Hierarchy(HierarchyConfig(steps=300))
    assert task.trains_many
    masks = torch.ones(4, task.n_train, dtype=torch.bool)
    masks[1, 3] = False                                          # leave one out
    masks[2, :4] = False                                         # half the tree
    masks[3, 1:] = False                                         # one item
    seeds = [3, 4, 5, 6]
    one = torch.stack([train_and_measure(task, m, s) for m, s in zip(masks, seeds)])
    torch.testing.assert_close(task.train_many(masks, seeds), one, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(one[0], one[2], atol=1e-3)


@pytest.mark.parametrize("chunk", [1, 3, 0])
def test_chunked_ground_truth_equals_one_by_one_and_resumes_per_chunk(tmp_path, chunk):
    from tdabench.tasks.digits import Digits, DigitsConfig

    task = Digits(DigitsConfig(n_train=120, n_query=10, epochs=2))
    cfg = GroundTruthConfig(num_subsets=7, chunk_size=chunk)
    first = CountingExecutor(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_ground_truth(task, cfg, 0, tmp_path / "a", first)
    done = len(list((tmp_path / "a").rglob("k*_r*.pt")))
    assert done >= 3                                        # every finished chunk is on disk
    truth = build_ground_truth(task, cfg, 0, tmp_path / "a", CountingExecutor())
    for k in (0, 6):
        torch.testing.assert_close(truth.replicas[0, k], train_and_measure(task, truth.masks[k], _seed_of(0, k, 0)),
                                   atol=2e-5, rtol=1e-5)


def test_ray_runs_chunks_of_a_batched_task_like_serial(tmp_path):
    from tdabench.tasks.digits import Digits, DigitsConfig

    task = Digits(DigitsConfig(n_train=100, n_query=8, epochs=2))
    serial, distributed = _serial_and_ray(task, GroundTruthConfig(num_subsets=6, chunk_size=2), 1, tmp_path)
    torch.testing.assert_close(serial.replicas, distributed.replicas)


def test_reference_order_reweights_the_reference_run(tmp_path):
    """gt.order=reference: row k is the reference run (its seed, init and data order) with the excluded
    examples weighted 0 — the all-ones row is the reference model itself, every row equals the one-run
    unroll with that β (so vectorising M runs changes nothing), and it is not the independent retrain."""
    from conftest import make_context
    from tdabench.tasks.digits import Digits, DigitsConfig

    task = Digits(DigitsConfig(n_train=64, n_query=10, hidden=8, epochs=2, batch_size=16))
    cfg = GroundTruthConfig(kind="loo", loo_examples=4, order="reference")
    truth = build_ground_truth(task, cfg, 0, tmp_path, SerialExecutor())
    ctx = make_context(task, tmp_path)
    torch.testing.assert_close(truth.targets[0], task.measure(ctx.model, task.query_data()), rtol=1e-5, atol=1e-6)
    unroll = task.unroll(task.make_model(ctx.train_seed), torch.arange(task.n_train), ctx.train_seed)
    for k in (1, 4):
        alone = unroll.model(unroll.run(truth.masks[k].float()))
        torch.testing.assert_close(truth.targets[k], task.measure(alone, task.query_data()), rtol=1e-5, atol=1e-6)
    independent = build_ground_truth(task, GroundTruthConfig(kind="loo", loo_examples=4), 0, tmp_path, SerialExecutor())
    assert truth.key != independent.key and truth.label.endswith("ref-order")
    assert not torch.allclose(truth.targets[1:], independent.targets[1:])


def test_reference_order_refuses_what_it_cannot_mean():
    from tdabench.api.config import ConfigError

    with pytest.raises(ConfigError, match="gt.retrain_seeds=1"):
        GroundTruthConfig(order="reference", retrain_seeds=2)
    with pytest.raises(ConfigError, match="gt.order='shuffled'"):
        GroundTruthConfig(order="shuffled")
    with pytest.raises(ConfigError, match=r"Task\.unroll.*set task\.optimizer=gd"):
        check_config(GroundTruthConfig(order="reference"), Regression(RegressionConfig(optimizer="lbfgs")))


@pytest.mark.parametrize("order", ["independent", "reference"])
def test_ground_truth_along_training_ends_at_the_ordinary_one(tmp_path, order):
    """gt.checkpoints=C measures every retrain at C points of its run: the last row is the end-of-training
    ground truth (same key otherwise), the first differs from it, and the label says C."""
    from tdabench.tasks.digits import Digits, DigitsConfig

    task = Digits(DigitsConfig(n_train=64, n_query=10, hidden=8, epochs=2, batch_size=16))
    base = GroundTruthConfig(kind="loo", loo_examples=4, order=order)
    along = GroundTruthConfig(kind="loo", loo_examples=4, order=order, checkpoints=4)
    end, truth = (build_ground_truth(task, c, 0, tmp_path, SerialExecutor()) for c in (base, along))
    assert truth.trajectory.shape == (1, 5, 4, 10) and truth.label.endswith("C=4")
    torch.testing.assert_close(truth.trajectory[:, :, -1], end.replicas, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(truth.replicas, end.replicas, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(truth.trajectory[:, :, 0], end.replicas)


def test_an_example_without_effect_has_a_zero_loo_trajectory(tmp_path):
    """hierarchy with a blank item (zero input, zero output): removing it changes no query at any step."""
    from tdabench.tasks.hierarchy import Hierarchy

    class WithBlank(Hierarchy):
        name = "hierarchy-blank"

        def train_data(self):
            x, y = super().train_data()
            return torch.cat([x, torch.zeros(1, x.shape[1], dtype=x.dtype)]), torch.cat([y, torch.zeros(1, y.shape[1], dtype=y.dtype)])

    task = WithBlank()
    truth = build_ground_truth(task, GroundTruthConfig(kind="loo", checkpoints=6), 0, tmp_path, SerialExecutor())
    delta = truth.trajectory[0, 1:] - truth.trajectory[0, :1]           # shape: [n_train, C, Q]
    assert delta[-1].abs().max() == 0                                  # the blank item: no effect, ever
    assert delta[:-1].abs().amax(dim=(1, 2)).min() > 1e-3              # every real item: an effect
