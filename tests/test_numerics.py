"""The run's device and numeric settings are honoured everywhere (GPU readiness, checked on a CPU)."""
from __future__ import annotations

import pytest
import torch

from tdabench.api.config import config_dict
from tdabench.engine.distributed import _worker_task
from tdabench.engine.groundtruth import GroundTruthConfig, GroundTruthStore
from tdabench.toolkit.meter import Meter
from tdabench.toolkit.numerics import Numerics, current_numerics
from tdabench.studies.sweep import trial_resources
from tdabench.tasks.cifar10 import Cifar10, Cifar10Config
from tdabench.tasks.regression import Regression, RegressionConfig


@pytest.fixture
def restore_torch_flags():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
     torch.backends.cudnn.benchmark) = saved[1:]


def test_a_ray_worker_builds_the_task_on_the_runs_device_not_on_what_it_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)          # a worker on a GPU node
    task = _worker_task("regression", config_dict(RegressionConfig(n_train=20)), Numerics(device="cpu"))
    assert task.device.type == "cpu"                                        # --device cpu is honoured
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="sees no GPU"):
        _worker_task("regression", config_dict(RegressionConfig(n_train=21)), Numerics(device="cuda"))


def test_cuda_runs_are_deterministic_without_tf32_by_default(restore_torch_flags):
    torch.backends.cuda.matmul.allow_tf32 = True
    Numerics(device="cuda").apply()
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    Numerics(device="cuda", deterministic=False, tf32=True).apply()
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.benchmark      # autotuning re-tunes per new batch shape: 6x slower retrains


def test_ground_truth_keys_carry_device_and_precision(tmp_path, restore_torch_flags):
    cfg, config = GroundTruthConfig(num_subsets=5), RegressionConfig(n_train=20)
    cpu = GroundTruthStore(Regression(config, device="cpu"), cfg, 0, tmp_path).key
    Numerics(device="cuda").apply()
    gpu = GroundTruthStore(Regression(config, device="cuda"), cfg, 0, tmp_path).key
    Numerics(device="cuda", tf32=True).apply()
    gpu_tf32 = GroundTruthStore(Regression(config, device="cuda"), cfg, 0, tmp_path).key
    assert len({cpu, gpu, gpu_tf32}) == 3
    assert current_numerics(Regression(config, device="cuda")).tf32 is True


def test_meter_reads_the_runs_cuda_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("sync", d)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset", d)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: calls.append(("peak", d)) or 2**20)
    with Meter("cuda:1") as meter:
        pass
    assert {d for _, d in calls} == {torch.device("cuda:1")} and meter.usage.peak_cuda_mb == 1.0


def test_tune_trials_reserve_the_tasks_gpu_share():
    gpu_task = Cifar10(Cifar10Config(gpu_fraction=0.25), device="cuda")     # built lazily: no data, no GPU needed
    assert trial_resources(gpu_task) == {"cpu": 1, "gpu": 0.25}
    assert trial_resources(Regression(device="cpu")) == {"cpu": 1}


def test_records_say_which_numerics_produced_them(tmp_path):
    import json

    from tdabench.engine.pipeline import evaluate
    from tdabench.engine.spec import RunSpec

    evaluate(RunSpec(task="regression", methods=("gradsim",), results_dir=tmp_path, executor="serial",
                     overrides={"task": {"n_train": "30"}, "gt": {"num_subsets": "5"}}))
    record = json.loads(next((tmp_path / "runs").rglob("seed0.json")).read_text())
    assert record["environment"]["numerics"] == {"device": "cpu"}


#: ATen's alertNotDeterministic text under warn_only=True (torch/csrc: "<op> does not have a deterministic
#: implementation, but you set 'torch.use_deterministic_algorithms(True, warn_only=True)'. ...")
_TORCH_ALERT = ("scaled_dot_product_attention_backward does not have a deterministic implementation, but you set "
                "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at ...")


def test_operations_torch_warns_are_nondeterministic_are_collected_and_other_warnings_pass():
    import warnings

    from tdabench.toolkit.numerics import watching

    with pytest.warns(UserWarning, match="something else"):
        with watching() as ops:
            warnings.warn(_TORCH_ALERT)
            warnings.warn(_TORCH_ALERT)
            warnings.warn("something else")
    assert ops == ["scaled_dot_product_attention_backward"]


def test_a_record_says_when_a_deterministic_run_met_a_nondeterministic_operation(tmp_path, monkeypatch, caplog):
    """A warning path is not deterministic (issue 37): the record and the log name the operation."""
    import warnings

    from tdabench.engine import pipeline
    from tdabench.engine.records import RunResult
    from tdabench.engine.spec import RunSpec
    from tdabench.api.registry import METHODS

    GradSim = METHODS.get("gradsim")
    real = GradSim.score

    def score(self, ctx):
        warnings.warn(_TORCH_ALERT)                  # what torch says on CUDA's fused attention backward
        return real(self, ctx)

    monkeypatch.setattr(GradSim, "score", score)
    spec = RunSpec(task="digits", methods=("gradsim", "random"), seeds=(0,), results_dir=tmp_path, executor="serial",
                   overrides={"task": {"n_train": "60", "n_query": "8"}, "gt": {"num_subsets": "8", "retrain_seeds": "1"}})
    _, failures = pipeline.evaluate(spec)
    assert not failures
    runs = tmp_path / "runs" / "digits"
    record = RunResult.load(next((runs / "gradsim").rglob("seed0.json")))
    assert record.environment["nondeterministic_ops"] == ["scaled_dot_product_attention_backward"]
    assert "nondeterministic_ops" not in RunResult.load(next((runs / "random").rglob("seed0.json"))).environment
    assert "without a deterministic implementation (scaled_dot_product_attention_backward)" in caplog.text
