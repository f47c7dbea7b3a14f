"""GPU readiness checked on the CPU (issue 18): measurement in bounded passes, the language task's
method recommendations as data (the same on every device, derived from the shapes), the reference
model never overwritten and keyed by device, and CIFAR-10's constants built once per device."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from tdabench.engine.reference import reference_key, reference_model
from tdabench.tasks.regression import Regression, RegressionConfig


class CountingRegression(Regression):
    """Regression whose measurement records the rows of every pass."""
    passes: list[int] = []

    @property
    def measure_batch_size(self) -> int:
        return 7

    def measurement(self, model, batch):
        self.passes.append(batch[0].shape[0])
        return super().measurement(model, batch)


def test_measure_runs_in_passes_of_the_tasks_batch_size_with_the_same_values():
    task = CountingRegression(RegressionConfig(n_train=40, n_query=30, dim=4))
    model = task.train(task.make_model(0), torch.arange(40), 0)
    task.passes.clear()
    chunked = task.measure(model, task.query_data())
    assert task.passes == [7, 7, 7, 7, 2]
    torch.testing.assert_close(chunked, task.measure(model, task.query_data(), batch_size=1024))


def test_the_reference_model_is_never_overwritten_when_checkpoints_are_first_asked_for(tmp_path, caplog):
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3, optimizer="gd", steps=20))
    model, _, key = reference_model(task, 0, tmp_path)
    path = tmp_path / "models" / "regression" / key / "model.pt"
    before = path.read_bytes()
    again, checkpoints, same = reference_model(task, 0, tmp_path, n_checkpoints=4)
    assert same == key and len(checkpoints) == 4 and path.read_bytes() == before
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert "differs from the cached one" not in caplog.text

    real = task.train                   # a repeat that lands elsewhere (as non-deterministic kernels would)

    def drifting(m, *args, **kwargs):
        out = real(m, *args, **kwargs)
        with torch.no_grad():
            next(out.parameters()).add_(1e-3)
        return out
    task.train = drifting
    with caplog.at_level(logging.WARNING):
        kept, _, _ = reference_model(task, 0, tmp_path, n_checkpoints=2)
    assert path.read_bytes() == before and "differs from the cached one by up to 0.001" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), kept.state_dict().values()))


def test_the_reference_key_names_the_device():
    cfg = RegressionConfig(n_train=30, n_query=5)
    assert reference_key(Regression(cfg), 0) != reference_key(Regression(cfg, device="cuda"), 0)
    assert reference_key(Regression(cfg), 0) == reference_key(Regression(cfg), 0)


def test_the_reference_key_names_the_cuda_kernels_and_keeps_the_cpu_key():
    """A reference model trained with TF32 matmuls is not the float32 one: on CUDA the key holds the kernel
    settings, as a ground truth's does; on the CPU it is the key the cached models were stored under."""
    import sys

    from tdabench.api.config import content_hash
    from tdabench.engine.fingerprint import digest, fingerprint

    cfg = RegressionConfig(n_train=30, n_query=5)
    cuda = Regression(cfg, device="cuda")
    before = torch.backends.cuda.matmul.allow_tf32            # a property of torch's: set and restored by hand
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = reference_key(cuda, 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = reference_key(cuda, 0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert tf32 != exact
    cpu = Regression(cfg)
    code = digest(fingerprint(type(cpu), sys.modules["tdabench.engine.reference"]))
    assert reference_key(cpu, 0) == content_hash([cpu.describe(), 0, "cpu", code])


def test_a_record_computed_on_another_device_or_with_other_kernels_is_never_this_runs(tmp_path, monkeypatch):
    """The record's key holds the device type and, off the CPU, the kernel settings: a CPU record is never
    found for a GPU run, nor a deterministic float32 one for a TF32 run; a CPU run keeps the keys the
    committed board has (``tdabench board --check`` holds every committed record to them)."""
    from tdabench.engine.reuse import record_path
    from tdabench.engine.spec import RunSpec, prepare

    spec = RunSpec(task="regression", methods=("gradsim",), results_dir=tmp_path, executor="serial",
                   overrides={"task": {"n_train": "30", "n_query": "5"}})
    plan = prepare(spec)
    method = plan.methods[0]
    cpu = record_path(spec, plan, method, 0)
    monkeypatch.setattr(plan.task, "device", torch.device("cuda"))
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    before = torch.backends.cuda.matmul.allow_tf32            # a property of torch's: set and restored by hand
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        gpu = record_path(spec, plan, method, 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = record_path(spec, plan, method, 0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert len({cpu, gpu, tf32}) == 3 and cpu.name == gpu.name == "seed0.json"
    monkeypatch.setattr(plan.task, "device", torch.device("cpu"))
    assert record_path(spec, plan, method, 0) == cpu


def test_cifar10_normalisation_constants_are_built_once_per_device():
    from tdabench.tasks.cifar10 import channel_stats, normalize

    channel_stats.cache_clear()
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    outs = [normalize(images) for _ in range(5)]
    assert channel_stats.cache_info().misses == 1 and channel_stats.cache_info().hits == 4
    assert all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cifar10_normalisation_does_not_synchronise_on_cuda():
    from tdabench.tasks.cifar10 import normalize

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, device="cuda")
    normalize(images)                                        # builds the constants once
    torch.cuda.set_sync_debug_mode("error")
    try:
        normalize(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----- the language task at Pythia-14M's shapes (a tiny random model with Pythia's vocabulary) -----
@pytest.fixture(scope="module")
def pythia_shaped(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tdabench.tasks.tinylm import train_tokenizer

    root = tmp_path_factory.mktemp("pythia-shaped")
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50304, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=2048)).save_pretrained(root)
    train_tokenizer(["a b c d e f"] * 20, 300).save_pretrained(root)
    return root


def test_pythia_measures_within_two_gib_and_recommends_the_same_on_every_device(pythia_shaped):
    from tdabench.tasks.pythia import Pythia, PythiaConfig

    cfg = PythiaConfig(model_name=str(pythia_shaped), revision="")    # 4,096 + 256 sequences of 1,024 tokens
    cpu, cuda = Pythia(cfg), Pythia(cfg, device="cuda")
    assert cpu.measure_batch_size == 5                                # 5 × 412 MB of logits and log-softmax
    assert 8 * 1024 * 50304 * cpu.measure_batch_size <= 2 << 30 < 8 * 1024 * 50304 * (cpu.measure_batch_size + 1)
    recs = cpu.recommendations()
    assert recs == cuda.recommendations()
    assert recs["ekfac"]["patterns"] == (r"^gpt_neox\.layers\.",)      # no embedding, no 50,304-wide output layer
    assert all(recs[m]["proj_dim"] == 4096 for m in ("gradsim", "tracin", "trackstar"))
    # passes of 5 sequences, not the methods' 64 (256 EK-FAC queries at once asked an H200 for 49 GiB more)
    assert recs["ekfac"]["batch_size"] == recs["ekfac"]["query_micro_batch"] == 5
    assert all(recs[m]["batch_size"] == 5 for m in ("gradsim", "tracin", "trackstar"))
    small = Pythia(PythiaConfig(model_name=str(pythia_shaped), revision="", n_train=8, n_query=2, context_length=16))
    assert "gradsim" not in small.recommendations()                   # 4·0.8M·10 bytes: exact gradients fit
    assert "batch_size" not in small.recommendations()["ekfac"]       # 333 sequences of 16 tokens fit 2 GiB



def test_cifar10_at_the_suites_largest_shape_plans_within_80_gb(tmp_path):
    """kreer2025-cifar10's largest step (N = 25,000, all 10,000 test images as queries) traced for a
    CUDA device from this CPU, on data in CIFAR's on-disk format: the data, a retrain (its 100 warmup
    steps traced at 2–3 and extrapolated) and the measurement of every query fit an 80 GB device, the
    queries measured in passes (their logits never all held at once)."""
    from test_cifar10 import write_cifar

    from tdabench.plan.costplan import trace
    from tdabench.engine.groundtruth import GroundTruthConfig
    from tdabench.engine.spec import make_task

    write_cifar(tmp_path, per_batch=10_000)
    sets = {"data_dir": str(tmp_path), "verify": "false", "download": "false", "n_train": "25000"}
    plan = trace(lambda d: make_task("cifar10", sets, d), [], GroundTruthConfig(), "cuda")
    stages = {s.stage: s for s in plan.stages}
    assert set(stages) == {"data", "retrain", "measure"}
    assert all(not s.partial and s.peak_bytes < 78 * 2**30 for s in plan.stages), plan.stages
    assert "of 100 task.warmup_steps" in stages["retrain"].note and "of 25,000 rows" in stages["retrain"].note
    assert stages["measure"].peak_bytes < 2 * 2**30 and "of 10,000 queries" in stages["measure"].note


def test_cifar10_trak_holds_its_projection_on_cuda(tmp_path):
    """At full width on CUDA, TRAK keeps its d × 2,048 projection in memory (redrawn per featurize batch
    it is 16 GB of random numbers each time); on a CPU nothing changes."""
    from test_cifar10 import write_cifar
    from tdabench.methods.trak import TRAKConfig
    from tdabench.tasks.cifar10 import Cifar10, Cifar10Config

    write_cifar(tmp_path, per_batch=20)
    cfg = Cifar10Config(data_dir=str(tmp_path), verify=False, download=False, n_train=50, warmup_size=10, n_query=10)
    recs = Cifar10(cfg, device="cuda").recommendations()
    dim = sum(p.numel() for p in Cifar10(cfg).make_model(0).parameters())
    held = recs["trak"]["projector_memory_mb"] * 2**20 // 4                   # float32 entries it may hold
    assert TRAKConfig().proj_dim * dim <= held < TRAKConfig().proj_dim * dim + 2**20
    assert dim * TRAKConfig().proj_dim > TRAKConfig().projector_memory_mb * 2**20 // 4   # the default redraws it
    assert "trak" not in Cifar10(cfg).recommendations()


def test_cifar10_source_scores_its_10000_queries_in_passes_under_8_gb(tmp_path):
    """SOURCE holds its queries' gradients twice ([Q, d] float32): 160 GB for the full test set at full width,
    so the task recommends passes of at most 8 GB of them; for a few queries nothing changes."""
    from test_cifar10 import write_cifar
    from tdabench.tasks.cifar10 import Cifar10, Cifar10Config

    write_cifar(tmp_path, per_batch=20)
    small = Cifar10Config(data_dir=str(tmp_path), verify=False, download=False, n_train=50, warmup_size=10, n_query=10)
    dim = sum(p.numel() for p in Cifar10(small).make_model(0).parameters())
    full = dataclasses.replace(small, n_query=0)
    batch = Cifar10(full, device="cuda").recommendations()["source"]["query_batch"]
    assert 8 * dim * batch <= 2**33 < 8 * dim * (batch + 1) and batch < 10_000
    assert "source" not in Cifar10(small).recommendations()


def test_cifar10_dattri_influence_functions_hold_at_most_8_gb_of_per_example_gradients(tmp_path):
    """dattri's attributors take the attribution set as one batch of per-example gradients ([n, d] float32:
    197 GB at N = 25,000 and full width) and the queries likewise (79 GB for 10,000): the bridge passes them
    at most 8 GB at a time by default; the task adds DataInf's Fisher from as many rows and CG's and
    Arnoldi's Hessian-vector products a training batch at a time; a small run is unchanged."""
    from test_cifar10 import write_cifar
    from types import SimpleNamespace

    from tdabench.engine.spec import make_method
    from tdabench.tasks.cifar10 import Cifar10, Cifar10Config
    from tdabench.toolkit.dattri_bridge import GRADIENT_BYTES

    write_cifar(tmp_path, per_batch=20)
    small = Cifar10Config(data_dir=str(tmp_path), verify=False, download=False, n_train=50, warmup_size=10, n_query=10)
    model = Cifar10(small).make_model(0)
    dim = sum(p.numel() for p in model.parameters())
    ctx = SimpleNamespace(model=model)                                        # what the pass size reads
    for name in ("cg", "lissa", "arnoldi", "datainf"):
        rows = make_method(name, Cifar10(small), {}).pass_rows(ctx, "train_batch", 25_000)
        assert 4 * dim * rows <= GRADIENT_BYTES == 2**33 < 4 * dim * (rows + 1) and rows < 10_000
    full = dataclasses.replace(small, n_train=25_000, n_query=0)
    recs = Cifar10(full, device="cuda").recommendations()
    assert round(recs["datainf"]["fit_fraction"] * 25_000) == rows
    assert recs["cg"]["hessian_batch"] == recs["arnoldi"]["hessian_batch"] == full.batch_size < 25_000
    assert not {"cg", "lissa", "arnoldi", "datainf"} & set(Cifar10(small).recommendations())
