"""The memory plan: fake-tensor bookkeeping against closed forms, the traced plan against the same
code run on real tensors and against a trace at full size, and refusals before any work."""
from __future__ import annotations

import torch

from tdabench.plan import costplan
from tdabench.cli.main import main
from tdabench.plan import capacity
from tdabench.plan.capacity import refusal
from tdabench.plan.costplan import CostPlan, StageCost, trace
from tdabench.plan.fakerun import LiveBytes, fake_run
from tdabench.engine.groundtruth import GroundTruthConfig
from tdabench.api.method import Method
from tdabench.engine.spec import make_method, make_task

MiB = 2**20


def test_live_bytes_follow_allocation_and_release():
    with fake_run(torch.device("cpu")) as (live, flops):
        start = live.current
        a = torch.empty(256, 1024)                          # 1 MiB of float32
        b = torch.empty(512, 1024)                          # 2 MiB
        assert live.current - start == 3 * MiB
        del a
        assert live.current - start == 2 * MiB and live.peak - start == 3 * MiB
        c = b @ torch.empty(1024, 64)                       # 2·512·1024·64 FLOPs
        assert flops.get_total_flops() == 2 * 512 * 1024 * 64
        assert type(c).__name__ == "FakeTensor" and c.shape == (512, 64)


def test_item_and_nonzero_are_stood_in_for():
    with fake_run(torch.device("cpu")) as (live, _):
        x = torch.randn(10)
        assert (x > 0).nonzero().shape == (10, 1)           # the upper bound: every element
        assert x.sum().item() == 1.0 and int((x > 0).sum()) == 0
        assert live.guessed >= 3


def test_a_library_imported_during_one_trace_saves_into_the_next_traces_files(tmp_path, monkeypatch):
    # kronfluence is imported lazily, inside the first trace of a suite's plan, and binds
    # safetensors' save_file there: the next trace's covariance factors must still land in its own
    # scratch (they went to the first trace's, and EK-FAC's fit failed with FactorsNotFoundError)
    import sys

    import safetensors.torch as st

    (tmp_path / "late_saver.py").write_text("from safetensors.torch import save_file\nimport torch\nsave = torch.save\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "late_saver", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    with fake_run(torch.device("cpu"), first):
        import late_saver
    assert late_saver.save_file is st.save_file and late_saver.save is torch.save
    with fake_run(torch.device("cpu"), second):
        late_saver.save_file({"w": torch.zeros(3)}, str(second / "factors.safetensors"))
        assert type(st.load_file(str(second / "factors.safetensors"))["w"]).__name__ == "FakeTensor"
    assert (second / "factors.safetensors").exists() and not list(first.iterdir())
    monkeypatch.delitem(sys.modules, "late_saver")


def _digits_gradsim(n_train: int):
    task = make_task("digits", {"n_train": str(n_train)}, torch.device("cpu"))
    return task, make_method("gradsim", task, {})


def _real_peak(task, method) -> int:
    """The same bookkeeping as the plan's, on real tensors: gradsim's score on an untrained model."""
    from tdabench.plan.costplan import _context

    model = task.make_model(0).eval()
    ctx = _context(task, model, [], __import__("pathlib").Path(__import__("tempfile").mkdtemp()))
    live = LiveBytes(torch.device("cpu"), fake_only=False)
    held = sum(t.untyped_storage().nbytes() for b in (task.train_data(), task.query_data()) for t in b)
    with live:
        method.score(ctx)
    return held + live.peak


def test_planned_peak_matches_the_real_run_within_10_percent():
    task, method = _digits_gradsim(1000)
    plan = trace(lambda d: make_task("digits", {"n_train": "1000"}, d), [method], GroundTruthConfig(), "cpu")
    planned = next(s for s in plan.stages if s.stage == "gradsim score")
    assert "extrapolated" in planned.note            # traced at fewer rows and queries than the run has
    real = _real_peak(task, method)
    assert abs(planned.peak_bytes - real) <= 0.10 * real, (planned.peak_bytes, real)   # measured 0.96×


def test_trak_through_traker_is_planned_as_it_runs():
    """traker copies features into numpy memory maps: a fake tensor copied to numpy gives zeros of
    its shape, so TRAK's fit (the ensemble's training, featurizing) and score are traced; their peaks
    against the same code on real tensors (measured 0.999× and 1.000×).  The member it trains is traced
    at 2–3 of the task's 20 epochs, the fit's FLOPs extrapolated to all of them."""
    import tempfile
    from pathlib import Path

    from tdabench.plan.costplan import _context

    make = lambda d: make_task("digits", {"n_train": "300"}, d)   # noqa: E731
    task = make(torch.device("cpu"))
    trak = make_method("trak", task, {"models": "2"})
    plan = {s.stage: s for s in trace(make, [trak], GroundTruthConfig(), "cpu").stages}
    ctx = _context(task, task.make_model(0).eval(), [], Path(tempfile.mkdtemp()))
    held = sum(t.untyped_storage().nbytes() for b in (task.train_data(), task.query_data()) for t in b)
    for stage in ("fit", "score"):
        live = LiveBytes(torch.device("cpu"), fake_only=False)
        with live:
            getattr(trak, stage)(ctx)
        planned = plan[f"trak {stage}"]
        assert planned.flops > 0 and not planned.partial
        if stage == "fit":
            assert "of 20 task.epochs" in planned.note
            assert abs(planned.flops - live.flops) <= 0.01 * live.flops
        assert abs(planned.peak_bytes - (held + live.peak)) <= 0.10 * (held + live.peak), (stage, planned, held + live.peak)


def test_extrapolation_agrees_with_a_trace_at_full_size(monkeypatch):
    make = lambda d: make_task("digits", {"n_train": "600"}, d)   # noqa: E731
    _, method = _digits_gradsim(600)
    gt = GroundTruthConfig(chunk_size=1)                                # one retrain at a time: its own trace
    small = {s.stage: s for s in trace(make, [method], gt, "cpu").stages}
    monkeypatch.setattr(costplan, "trace_sizes", lambda n, *a, **k: (n,))
    monkeypatch.setattr(costplan, "task_loops", lambda config: {})     # all 20 epochs of every retrain
    full = {s.stage: s for s in trace(make, [method], gt, "cpu").stages}
    assert "of 20 task.epochs" in small["retrain"].note
    for name in ("retrain", "gradsim score"):   # measured: peaks 0.99× and 0.99×, FLOPs 0.991× and 1.000×
        assert full[name].note == "" and small[name].note
        assert abs(small[name].flops - full[name].flops) <= 0.01 * full[name].flops
        assert 0.95 * full[name].peak_bytes <= small[name].peak_bytes <= 1.3 * full[name].peak_bytes


def test_a_stage_over_the_memory_is_refused_naming_its_settings():
    plan = CostPlan("t", "cuda", "cpu", (StageCost("data", 1 * MiB), StageCost("gradsim score", 50 * 2**30, settings="gradsim.batch_size=64")))
    assert refusal(plan, 80 * 2**30) == ""
    message = refusal(plan, 40 * 2**30)
    assert "gradsim score" in message and "gradsim.batch_size=64" in message and "data" not in message.split(":")[1]


def test_plan_command_refuses_an_oversized_setting(capsys, tmp_path):
    code = main(["plan", "--task", "digits", "--method", "gradsim", "--device-memory", "0.001",
                 "--results-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 1
    assert "does not fit in" in out and "gradsim.batch_size" in out
    assert not (tmp_path / "r").exists()               # nothing was trained or written


def test_plan_command_rejects_bad_numbers(capsys):
    assert main(["plan", "--task", "digits", "--method", "gradsim", "--device-memory", "-3"]) == 2
    assert "--device-memory" in capsys.readouterr().err


def test_a_cuda_run_is_refused_before_any_work_when_its_plan_does_not_fit(monkeypatch, tmp_path):
    """The check `tdabench run` makes on CUDA (planned on the CPU path here): a device of 1 MB."""
    from types import SimpleNamespace

    import pytest

    from tdabench.engine import pipeline
    from tdabench.api.config import ConfigError
    from tdabench.engine.spec import RunSpec

    task, method = _digits_gradsim(300)
    spec = RunSpec(task="digits", methods=("gradsim",), overrides={"task": {"n_train": "300"}}, results_dir=tmp_path)
    plan = SimpleNamespace(task=SimpleNamespace(device=torch.device("cuda")), methods=[method], gt=GroundTruthConfig())
    monkeypatch.setattr(pipeline, "device_memory", lambda device: 2**20 + capacity.CUDA_HEADROOM)
    with pytest.raises(ConfigError, match="gradsim score.*gradsim.batch_size"):
        pipeline.check_memory(spec, plan)
    monkeypatch.setattr(pipeline, "device_memory", lambda device: 80 * 2**30)
    pipeline.check_memory(spec, plan)                                   # fits: no error
    pipeline.check_memory(spec.replace(check_memory=False), plan)       # --no-plan: not traced
    assert not list(tmp_path.iterdir())


def test_retrain_count_is_the_ground_truths_own():
    """The plan's retrains per seed equal the rows of the masks the ground truth builds, times R."""
    from tdabench.api.config import apply_overrides
    from tdabench.engine.groundtruth import make_masks

    for sets in ({"num_subsets": "7", "retrain_seeds": "2"}, {"kind": "loo", "retrain_seeds": "3"},
                 {"kind": "loo", "loo_examples": "9", "retrain_seeds": "2"}):
        gt = apply_overrides(GroundTruthConfig(), sets, "gt")
        assert costplan.retrains_per_seed(gt, 40) == make_masks(40, gt, 0)[0].shape[0] * gt.retrain_seeds


class _Consuming(Method):
    """A method whose score uses up what its fit made (as TRAK's feature store) and fits again when
    called without it: fit 2·n·512·64 FLOPs, score 2·n·q."""

    name = "consuming"

    def fit(self, ctx):
        self.state = torch.ones(ctx.n_train, 512) @ torch.ones(512, 64)           # shape: [n, 64]

    def score(self, ctx):
        if getattr(self, "state", None) is None:
            self.fit(ctx)
        out, self.state = self.state[:, :1] @ torch.ones(1, ctx.n_query), None    # shape: [n, q]
        return out


def test_a_score_that_refits_is_planned_without_the_fit():
    """Traced at two query counts, the second score would run a whole fit inside the score stage and
    the query slope would carry it; the planner fits outside the stage first, as a run does."""
    make = lambda d: make_task("digits", {"n_train": "300", "n_query": "100"}, d)   # noqa: E731
    plan = {s.stage: s for s in trace(make, [_Consuming()], GroundTruthConfig(), "cpu").stages}
    assert plan["consuming score"].flops == 2 * 300 * 100
    assert plan["consuming fit"].flops == 2 * 300 * 512 * 64


class _Untraceable(Method):
    """A toy method whose score has a data-dependent shape (``torch.unique``): fake tensors cannot run it."""

    name = "untraceable"

    def score(self, ctx):
        scores = torch.randn(ctx.n_train, ctx.n_query)
        return scores * len(torch.unique(scores.argmax(0)))


def test_a_plan_with_a_stage_it_could_not_finish_never_says_fits(capsys):
    """An untraceable stage (its peak unknown) and one stopped at the operator budget (a lower bound) are
    refused by name, by `plan` (exit 1, no "fits") and by the check before a CUDA run, unless accepted."""
    task = make_task("digits", {"n_train": "100"}, torch.device("cpu"))
    plan = trace(lambda d: make_task("digits", {"n_train": "100"}, d), [_Untraceable()], GroundTruthConfig(), "cpu", 1)
    stage = next(s for s in plan.stages if s.stage == "untraceable score")
    assert stage.peak_bytes is None and task.n_train == 100
    message = refusal(plan, 80 * 2**30)
    assert "cannot say the run fits" in message and "untraceable score not traced" in message
    assert refusal(plan, 80 * 2**30, accept_unfinished=True) == ""
    assert main(["plan", "--task", "digits", "--method", "gradsim", "--trace-ops", "10"]) == 1
    out = capsys.readouterr().out
    assert "fits" not in out.replace("cannot say the run fits", "") and "gradsim score ≥" in out and "total ≥" in out
    assert main(["plan", "--task", "digits", "--method", "gradsim", "--trace-ops", "10", "--plan-unfinished", "accept"]) == 0
    # digits' retrains, trained many at once, are measured on real tensors at small sizes: no budget stops them
    assert "fits on the finished stages' word (3 unfinished, accepted)" in capsys.readouterr().out


def test_a_cuda_run_never_starts_on_a_plan_it_could_not_finish(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import pytest

    from tdabench.api.config import ConfigError
    from tdabench.engine import pipeline
    from tdabench.engine.spec import RunSpec

    spec = RunSpec(task="digits", methods=("untraceable",), overrides={"task": {"n_train": "100"}}, results_dir=tmp_path)
    plan = SimpleNamespace(task=SimpleNamespace(device=torch.device("cuda")), methods=[_Untraceable()],
                           gt=GroundTruthConfig())
    monkeypatch.setattr(pipeline, "device_memory", lambda device: 80 * 2**30)
    with pytest.raises(ConfigError, match="untraceable score not traced"):
        pipeline.check_memory(spec, plan)
    pipeline.check_memory(spec.replace(plan_unfinished="accept"), plan)       # accepted: the finished stages fit
    assert not list(tmp_path.iterdir())


def _real_many(task, masks, order="independent"):
    """Peak bytes (data included) and FLOPs of ``train_and_measure_many`` on real tensors."""
    from tdabench.toolkit.retrain import train_and_measure_many

    held = sum(t.untyped_storage().nbytes() for b in (task.train_data(), task.query_data()) for t in b)
    live = LiveBytes(torch.device("cpu"), fake_only=False)
    seeds = [1] * len(masks) if order == "reference" else list(range(1, len(masks) + 1))
    with live:
        train_and_measure_many(task, masks, seeds, order)
    return held + live.peak, live.flops


def test_retrains_trained_many_at_once_are_planned_as_the_ground_truth_runs_them(monkeypatch):
    """digits trains its retrains many at once (``train_many``; on CUDA every model of a chunk in one
    group): the plan's retrain stage is one chunk of 64 as the ground truth groups them, against the same
    chunk trained for real (measured 1.06× the peak and 0.98× the FLOPs at 256 models; a single
    retrain's peak is 0.3 % of it)."""
    from tdabench.toolkit import stacked_mlp
    from tdabench.toolkit.retrain import subset_masks

    monkeypatch.setattr(stacked_mlp, "group_size", lambda model, batch: 2**62)   # CUDA's grouping: all at once
    make = lambda d: make_task("digits", {}, d)   # noqa: E731
    gt = GroundTruthConfig(num_subsets=64, retrain_seeds=1)
    stage = next(s for s in trace(make, [], gt, "cpu").stages if s.stage == "retrain")
    task = make(torch.device("cpu"))
    peak, flops = _real_many(task, subset_masks(task.n_train, gt.alpha, 64, 0))
    assert "64 retrains at once" in stage.settings and stage.count == 1
    assert 0.95 * peak <= stage.peak_bytes <= 1.3 * peak, (stage.peak_bytes, peak)
    assert abs(stage.flops - flops) <= 0.1 * flops, (stage.flops, flops)


def test_reference_order_runs_are_traced_together():
    """``gt.order=reference`` reweights one run for every retrain, all M at once: traced on fake tensors
    with 2 and 3 runs and extrapolated to the chunk, against the chunk run on real tensors."""
    from tdabench.toolkit.retrain import subset_masks

    make = lambda d: make_task("digits", {"n_train": "300"}, d)   # noqa: E731
    gt = GroundTruthConfig(num_subsets=32, retrain_seeds=1, order="reference")
    stage = next(s for s in trace(make, [], gt, "cpu").stages if s.stage == "retrain")
    task = make(torch.device("cpu"))
    peak, flops = _real_many(task, subset_masks(task.n_train, gt.alpha, 32, 0), "reference")
    assert "32 retrains at once" in stage.settings
    assert 0.9 * peak <= stage.peak_bytes <= 1.3 * peak, (stage.peak_bytes, peak)
    assert abs(stage.flops - flops) <= 0.1 * flops, (stage.flops, flops)


def test_retrains_sharing_a_gpu_add_up():
    """On CUDA, Ray runs 1/num_gpus_per_retrain retrains on each GPU at once (CIFAR-10's gpu_fraction 0.25:
    four): the retrain stage's peak is theirs together; on the CPU, and with a whole GPU each, it is one's."""
    class Shared:
        num_gpus_per_retrain = 0.25

    class Whole:
        num_gpus_per_retrain = 1.0

    one = StageCost("retrain", 3 * 2**30, 10, 100, "task.batch_size=1024")
    four = costplan._sharing(one, Shared(), torch.device("cuda"))
    assert four.peak_bytes == 4 * one.peak_bytes and "× 4 sharing each GPU" in four.settings
    assert four.flops == one.flops and four.count == one.count
    assert costplan._sharing(one, Shared(), torch.device("cpu")) == one
    assert costplan._sharing(one, Whole(), torch.device("cuda")) == one


def test_a_suite_plan_adds_methods_and_names_each_one_that_cannot_serve_a_step(capsys, monkeypatch):
    """``plan --suite S --method M,…`` plans M in every run step besides the suite's own; a method the step's
    task refuses (here ``if`` over its ``max_params``) is named with its reason and left out, not a crash."""
    from tdabench.api.suite import Step, Suite
    from tdabench.studies import presets

    toy = Suite("toy", "two steps", (Step("run", "regression", ("gradsim",), 1, ("if.max_params=1000",)),
                                     Step("run", "digits", ("gradsim",), 1, ("if.max_params=1000",))))
    monkeypatch.setattr(presets, "get_suite", lambda name: toy)
    assert main(["plan", "--suite", "toy", "--method", "if,gradsim", "--trace-ops", "0"]) == 0
    out = capsys.readouterr().out
    assert "plan: if not planned on digits: if: the model has" in out and "if.max_params=1,000" in out
    regression, digits = out.split("plan: regression")[1].split("plan: digits")
    assert "if fit" in regression and "gradsim score" in regression and regression.count("gradsim score") == 1
    assert "if fit" not in digits and "gradsim score" in digits
