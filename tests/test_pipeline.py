"""The one evaluation pipeline: every command goes through it, settings fail before training, scores
are stored, metrics are plug-ins, regimes stay apart, and nothing made by other code is reused."""
from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from tdabench import cli
from tdabench.engine import pipeline
from tdabench.studies.baseline_check import regress
from tdabench.api.config import ConfigError, parse_set_args
from tdabench.report.leaderboard import leaderboard
from tdabench.api.method import Method
from tdabench.api.registry import METHODS, TASKS
from tdabench.engine.spec import RunSpec
from tdabench.engine.store import StoreConfig, load_scores, save_scores

REPO = Path(__file__).resolve().parent.parent
SMALL = {"task": {"n_train": "40", "n_query": "10"}, "gt": {"num_subsets": "12"}}


def _spec(tmp_path: Path, methods: tuple[str, ...] = ("gradsim",), **kw) -> RunSpec:
    overrides = kw.pop("overrides", SMALL)
    return RunSpec(task="regression", methods=methods, seeds=(0,), results_dir=tmp_path, executor="serial",
                   overrides=overrides, **kw)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of pipeline.fit_and_score (the one place a method is fitted and scored)."""
    calls: list[str] = []
    real = pipeline.fit_and_score
    monkeypatch.setattr(pipeline, "fit_and_score", lambda m, ctx: calls.append(m.name) or real(m, ctx))
    return calls


def test_run_regress_sweep_and_scaling_all_go_through_fit_and_score(tmp_path, spy):
    from tdabench.studies.scaling import scaling_study
    from tdabench.studies.sweep import SweepSpec, _prepare, _trial

    pipeline.evaluate(_spec(tmp_path))
    assert spy == ["gradsim"]
    base = tmp_path / "baselines.json"
    base.write_text(json.dumps({"checks": [{"task": "regression", "methods": ["gradsim"], "seeds": 1,
                                            "set": ["task.n_train=40", "task.n_query=10", "gt.num_subsets=12"]}]}))
    regress(base, tmp_path, executor="serial")
    assert spy == ["gradsim"] * 2
    sweep_spec = SweepSpec(run=_spec(tmp_path, ("if",)), grid={"damping": ("0.01",)})
    truths = _prepare(sweep_spec)
    result = _trial({"damping": "0.01"}, sweep_spec.run, truths)           # what each Tune trial runs
    assert spy[-1] == "if" and result["seconds"] > 0
    scaling_study(_spec(tmp_path, overrides={"gt": {"num_subsets": "12"}}), "task.n_train=20,40")
    assert spy[-2:] == ["gradsim", "gradsim"]


def test_sweep_trials_get_the_pipelines_checks(tmp_path, monkeypatch):
    from tdabench.studies.sweep import SweepSpec, _prepare, _trial

    sweep_spec = SweepSpec(run=_spec(tmp_path), grid={})
    truths = _prepare(sweep_spec)
    monkeypatch.setattr(METHODS.get("gradsim"), "score", lambda self, ctx: torch.full((ctx.n_train, ctx.n_query), float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        _trial({}, sweep_spec.run, truths)


@pytest.mark.parametrize("setting, field", [
    ("bif.chains=0", "bif.chains"), ("trak.models=-1", "trak.models"), ("if.damping=-1", "if.damping"),
    ("ekfac.damping=-1", "ekfac.damping"), ("gradsim.batch_size=0", "gradsim.batch_size"),
    ("store.max_mb=0.0001", "store.max_mb"), ("gt.loo_examples=1", "gt.loo_examples"),
])
def test_bad_settings_fail_before_any_retrain_in_seconds(setting, field, tmp_path, capsys, monkeypatch):
    from tdabench.toolkit import retrain

    monkeypatch.setattr(retrain, "train_and_measure", lambda *a: pytest.fail("a retrain started"))
    method = setting.split(".")[0]
    method = method if method not in ("store", "gt") else "gradsim"
    if METHODS.get(method).missing_requirements():
        pytest.skip(f"{method} is not installed here")
    start = time.perf_counter()
    code = cli.main(["run", "--task", "digits", "--method", method, "--serial", "--set", setting,
                     "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and field in err and "Traceback" not in err
    assert time.perf_counter() - start < 5.0
    assert not (tmp_path / "ground_truth").exists() and not (tmp_path / "models").exists()


def test_regimes_are_separate_labelled_rows(tmp_path):
    for alpha in ("0.5", "0.99"):
        overrides = {**SMALL, "gt": {"num_subsets": "12", "alpha": alpha}}
        summaries, failures = pipeline.evaluate(_spec(tmp_path, ("gradsim", "random"), overrides=overrides))
        assert not failures and {s["ground_truth"] for s in summaries} == {f"α={float(alpha):g} K=12 R=1"}
    rows = json.loads(leaderboard(tmp_path, fmt="json"))
    assert sorted({r["ground_truth"] for r in rows}) == ["α=0.5 K=12 R=1", "α=0.99 K=12 R=1"]
    for regime in ("α=0.5 K=12 R=1", "α=0.99 K=12 R=1"):   # each regime ranked on its own: ranks 1 and 2
        assert sorted(r["rank"].lstrip("=") for r in rows if r["ground_truth"] == regime) in (["1", "2"], ["1", "1"])
    assert "| α=0.99 K=12 R=1 |" in leaderboard(tmp_path, fmt="md")


def test_leave_one_out_ground_truth_and_the_loo_metric_of_if(tmp_path):
    """``if`` on the strongly convex regression task is exact to first order: its scores correlate with
    the actual leave-one-out effects of 200 retrains at > 0.99; random scores do not."""
    spec = RunSpec(task="regression", methods=("if", "random"), seeds=(0,), results_dir=tmp_path,
                   executor="serial", overrides={"gt": {"kind": "loo"}})
    summaries, failures = pipeline.evaluate(spec)
    assert not failures
    by = {s["method"]: s for s in summaries}
    assert {s["metric"] for s in summaries} == {"loo"} and by["if"]["ground_truth"] == "LOO all R=1"
    assert by["if"]["mean"] > 0.99 and abs(by["random"]["mean"]) < 0.1


def test_lds_metric_refused_on_leave_one_out_ground_truth(tmp_path):
    with pytest.raises(ConfigError, match="gt.kind=subsets"):
        pipeline.prepare(_spec(tmp_path, overrides={"gt": {"kind": "loo"}}, metrics=("lds",)))


def test_evaluate_recomputes_from_stored_scores_without_running_a_method(tmp_path, capsys, monkeypatch):
    overrides = {**SMALL, "gt": {"num_subsets": "12", "retrain_seeds": "2"}}
    pipeline.evaluate(_spec(tmp_path, ("gradsim", "if"), overrides=overrides))
    path = next((tmp_path / "runs" / "regression" / "if").rglob("seed0.json"))
    before = json.loads(path.read_text())
    broken = dict(before, metrics={})                    # as if the metric had never been computed
    path.write_text(json.dumps(broken))
    for name in METHODS.names():                          # any method call now fails the test
        monkeypatch.setattr(METHODS.get(name), "score", lambda *a: pytest.fail("a method ran"))
        monkeypatch.setattr(METHODS.get(name), "fit", lambda *a: pytest.fail("a method ran"))
    assert cli.main(["evaluate", "--task", "regression", "--metric", "lds", "--results-dir", str(tmp_path)]) == 0
    after = json.loads(path.read_text())
    assert after["metrics"]["lds"]["value"] == pytest.approx(before["metrics"]["lds"]["value"], abs=1e-12)
    assert after["metrics"]["lds"]["ceiling"] == pytest.approx(before["metrics"]["lds"]["ceiling"])
    assert "regression/if" in capsys.readouterr().out


def test_a_missing_metric_is_computed_from_stored_scores_by_run(tmp_path, spy):
    first, _ = pipeline.evaluate(_spec(tmp_path))
    path = next((tmp_path / "runs").rglob("seed0.json"))
    path.write_text(json.dumps(dict(json.loads(path.read_text()), metrics={})))
    summaries, _ = pipeline.evaluate(_spec(tmp_path))
    assert spy == ["gradsim"]                                           # scored once: the metric came from storage
    assert summaries[0]["mean"] == pytest.approx(first[0]["mean"], abs=1e-12)


@pytest.mark.parametrize("dtype, topk", [("float32", 0), ("float16", 0), ("float32", 3)])
def test_stored_scores_round_trip(tmp_path, dtype, topk):
    scores = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    save_scores(tmp_path / "s.pt", scores, StoreConfig(dtype=dtype, topk=topk))
    back, exact = load_scores(tmp_path / "s.pt")
    assert back.shape == scores.shape and exact == (topk == 0)
    if topk:
        top = scores.abs().topk(topk, dim=0).indices
        torch.testing.assert_close(back.gather(0, top), scores.gather(0, top))
        assert int((back != 0).sum()) == topk * 5
    else:
        torch.testing.assert_close(back, scores, atol=1e-3 if dtype == "float16" else 0, rtol=1e-3 if dtype == "float16" else 0)


def _plugin(tmp_path: Path, monkeypatch, source: Path, module: str, renames: dict[str, str]) -> Path:
    """A copy of a built-in plug-in file as a third-party module (its own name), importable from tmp_path."""
    text = source.read_text()
    for old, new in renames.items():
        text = text.replace(old, new)
    path = tmp_path / f"{module}.py"
    path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def _reload(module: str) -> None:
    sys.modules.pop(module, None)
    importlib.import_module(module)


def test_editing_a_methods_file_makes_run_recompute_and_say_why(tmp_path, monkeypatch, caplog, spy):
    path = _plugin(tmp_path, monkeypatch, REPO / "methods" / "gradsim.py", "mygradsim",
                   {'name = "gradsim"': 'name = "mygradsim"'})
    monkeypatch.setattr(METHODS, "_classes", dict(METHODS._classes))
    _reload("mygradsim")
    spec = _spec(tmp_path / "results", ("mygradsim",))
    pipeline.evaluate(spec)
    pipeline.evaluate(spec)
    assert spy == ["mygradsim"]                                  # unchanged code: the record is reused
    path.write_text(path.read_text() + "\n# an edit\n")          # a comment is not a change of code
    _reload("mygradsim")
    pipeline.evaluate(spec)
    assert spy == ["mygradsim"]
    text = path.read_text().replace("return -(g_train @ g_query.T)", "return -2 * (g_train @ g_query.T)")  # this is
    assert text != path.read_text()
    path.write_text(text)
    _reload("mygradsim")
    with caplog.at_level("WARNING", logger="tdabench"):
        pipeline.evaluate(spec)
    assert spy == ["mygradsim"] * 2
    assert "made by other code (changed: mygradsim)" in caplog.text


def test_editing_a_tasks_training_code_without_a_version_bump_rebuilds_ground_truth(tmp_path, monkeypatch, caplog):
    path = _plugin(tmp_path, monkeypatch, REPO / "tasks" / "regression.py", "myregression",
                   {'name = "regression"': 'name = "myregression"'})
    monkeypatch.setattr(TASKS, "_classes", dict(TASKS._classes))
    _reload("myregression")
    spec = RunSpec(task="myregression", methods=("gradsim",), seeds=(0,), results_dir=tmp_path / "results",
                   executor="serial", overrides=SMALL)
    pipeline.evaluate(spec)
    text = path.read_text().replace("tolerance_change=1e-14", "tolerance_change=1e-13")   # a recipe change
    assert text != path.read_text()
    path.write_text(text)
    _reload("myregression")
    with caplog.at_level("WARNING", logger="tdabench"):
        pipeline.evaluate(spec)
    assert "ground truth myregression seed 0 was built by other code (changed: myregression)" in caplog.text
    assert "recomputing gradsim on myregression seed 0" in caplog.text
    assert len(list((tmp_path / "results" / "ground_truth" / "myregression").glob("*.stale0"))) == 1


def test_task_recommendations_apply_and_the_board_says_where_settings_came_from(tmp_path, monkeypatch):
    from tdabench.tasks.regression import Regression

    class Recommending(Regression):
        name = "recommending"
        recommended = {"gradsim": {"normalize": True}}

    monkeypatch.setattr(TASKS, "_classes", {**TASKS._classes, "recommending": Recommending})
    spec = RunSpec(task="recommending", methods=("gradsim",), seeds=(0,), results_dir=tmp_path, executor="serial",
                   overrides={**SMALL, "gradsim": {"batch_size": "8"}})
    plan = pipeline.prepare(spec)
    assert plan.methods[0].config.normalize is True and plan.methods[0].config.batch_size == 8
    pipeline.evaluate(spec)
    record = json.loads(next(tmp_path.rglob("seed0.json")).read_text())
    assert record["method_recommended"] == {"normalize": True} and record["method_overrides"] == {"batch_size": 8}
    board = leaderboard(tmp_path)
    assert "normalize=True [task]" in board and "batch_size=8" in board and "batch_size=8 [task]" not in board


def test_a_task_recommending_an_unknown_setting_fails_naming_it(tmp_path, monkeypatch):
    from tdabench.tasks.regression import Regression

    class Typo(Regression):
        name = "typo"
        recommended = {"gradsim": {"proj_dmi": 8}}

    monkeypatch.setattr(TASKS, "_classes", {**TASKS._classes, "typo": Typo})
    with pytest.raises(ConfigError, match="proj_dmi"):
        pipeline.prepare(RunSpec(task="typo", methods=("gradsim",), results_dir=tmp_path))


def test_stale_records_are_marked_on_the_leaderboard(tmp_path):
    pipeline.evaluate(_spec(tmp_path))
    path = next(tmp_path.rglob("seed0.json"))
    record = json.loads(path.read_text())
    record["code"]["tdabench.methods.gradsim"] = "0" * 16
    path.write_text(json.dumps(record))
    assert "gradsim * (stale)" in leaderboard(tmp_path)


def test_plugins_never_import_the_pipeline():
    """Methods, tasks and metrics import interfaces and toolkits only."""
    import ast

    forbidden = {"tdabench.engine.pipeline", "tdabench.engine.spec", "tdabench.runner", "tdabench.engine.reference",
                 "tdabench.engine.distributed", "tdabench.cli", "tdabench.studies.sweep", "tdabench.studies.scaling"}
    for folder in ("methods", "tasks", "metrics"):
        for file in (REPO / folder).glob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                    assert not names & forbidden, f"{file.name} imports {names & forbidden}"


def test_a_truncated_ground_truth_piece_is_named_quarantined_and_retrained(tmp_path, caplog):
    pipeline.evaluate(_spec(tmp_path))
    piece = sorted((tmp_path / "ground_truth").rglob("k00003_r000.pt"))[0]
    good = torch.load(piece)
    piece.write_bytes(piece.read_bytes()[:20])                       # a write cut short by a crash
    with caplog.at_level("WARNING", logger="tdabench"):
        pipeline.evaluate(_spec(tmp_path, force=True))
    assert f"ground-truth piece {piece} is unreadable" in caplog.text
    assert piece.with_name(piece.name + ".corrupt0").exists()       # kept for inspection
    torch.testing.assert_close(torch.load(piece), good)             # retrained, the same numbers


def test_a_truncated_record_and_unreadable_scores_are_named_and_recomputed(tmp_path, caplog, spy):
    pipeline.evaluate(_spec(tmp_path))
    record = next((tmp_path / "runs").rglob("seed0.json"))
    before = json.loads(record.read_text())
    record.write_text(record.read_text()[:100])
    with caplog.at_level("WARNING", logger="tdabench"):
        summaries, failures = pipeline.evaluate(_spec(tmp_path))
    assert not failures and spy == ["gradsim", "gradsim"]
    assert f"{record} is unreadable" in caplog.text and record.with_name("seed0.json.corrupt0").exists()
    assert summaries[0]["mean"] == pytest.approx(before["metrics"]["lds"]["value"])
    scores = record.with_name(json.loads(record.read_text())["scores_file"])
    scores.write_bytes(b"not a tensor")
    record.write_text(json.dumps(dict(json.loads(record.read_text()), metrics={})))   # metrics must come from scores
    pipeline.evaluate(_spec(tmp_path))
    assert spy == ["gradsim"] * 3 and "stored scores" in caplog.text


def test_verify_reports_unreadable_and_stale_files_without_touching_them(tmp_path, capsys):
    pipeline.evaluate(_spec(tmp_path, ("gradsim", "random")))
    assert cli.main(["verify", "--results-dir", str(tmp_path)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    record = next((tmp_path / "runs" / "regression" / "gradsim").rglob("seed0.json"))
    stale = json.loads(record.read_text())
    stale["code"]["tdabench.methods.gradsim"] = "0" * 16
    record.write_text(json.dumps(stale))
    other = next((tmp_path / "runs" / "regression" / "random").rglob("seed0.json"))
    other.write_text("{ truncated")
    piece = sorted((tmp_path / "ground_truth").rglob("k00001_r000.pt"))[0]
    piece.write_bytes(b"garbage")
    assert cli.main(["verify", "--results-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{record}: made by code that has changed since" in out
    assert f"{other} is unreadable" in out and f"{piece}: unreadable" in out
    assert piece.read_bytes() == b"garbage" and other.read_text() == "{ truncated"   # read-only


def test_verify_accepts_a_ground_truth_measured_along_training_by_the_current_code(tmp_path, capsys):
    # its code includes trajectory.py; verify once called every such ground truth "built by other code"
    from tdabench.engine.distributed import SerialExecutor
    from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth
    from tdabench.engine.spec import make_task

    task = make_task("regression", {"n_train": "20", "optimizer": "gd", "steps": "20"}, torch.device("cpu"))
    build_ground_truth(task, GroundTruthConfig(num_subsets=4, checkpoints=2), 0, tmp_path, SerialExecutor())
    assert cli.main(["verify", "--results-dir", str(tmp_path)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_a_task_with_no_examples_fails_before_any_work(tmp_path, capsys):
    code = cli.main(["run", "--task", "digits", "--method", "gradsim", "--set", "task.n_train=0",
                     "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "task.n_train=0: must be an integer ≥ 2 (attribution set size)" in err and "Traceback" not in err


def test_evaluate_metric_loo_on_stored_scores_runs_no_method(tmp_path, capsys, monkeypatch):
    overrides = {"task": {"n_train": "40", "n_query": "10"}, "gt": {"kind": "loo", "retrain_seeds": "2"}}
    pipeline.evaluate(_spec(tmp_path, ("if",), overrides=overrides))
    path = next((tmp_path / "runs").rglob("seed0.json"))
    before = json.loads(path.read_text())["metrics"]["loo"]
    for name in METHODS.names():
        monkeypatch.setattr(METHODS.get(name), "score", lambda *a: pytest.fail("a method ran"))
        monkeypatch.setattr(METHODS.get(name), "fit", lambda *a: pytest.fail("a method ran"))
    assert cli.main(["evaluate", "--metric", "loo", "--results-dir", str(tmp_path)]) == 0
    after = json.loads(path.read_text())["metrics"]["loo"]
    assert after["value"] == pytest.approx(before["value"], abs=1e-12)   # the same number, no method call
    assert after["ceiling"] is not None and "loo" in capsys.readouterr().out


def test_two_concurrent_runs_build_the_ground_truth_once_and_agree(tmp_path):
    """Two `tdabench run` processes on one results directory: one builds, the other waits and reuses."""
    import subprocess

    cmd = [sys.executable, "-m", "tdabench.cli", "run", "--task", "regression", "--method", "gradsim", "--seeds", "1",
           "--serial", "--json", "--set", "gt.num_subsets=200", "--results-dir", str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    logs = "".join(err for _, err in outs)
    assert logs.count("retrains to do") == 1                    # built once
    assert "waiting for another tdabench run" in logs          # the other one waited for it
    assert len(list((tmp_path / "ground_truth").rglob("k*_r*.pt"))) == 200
    assert json.loads(outs[0][0]) == json.loads(outs[1][0])    # the same numbers


def test_concurrent_runs_of_different_methods_train_the_reference_model_once(tmp_path):
    """Two runs with different methods share one ground truth and one reference model: each is
    trained by one of them while the other waits, then loads it."""
    import subprocess

    base = [sys.executable, "-m", "tdabench.cli", "run", "--task", "regression", "--seeds", "1", "--serial", "--json",
            "--set", "gt.num_subsets=40", "--results-dir", str(tmp_path)]
    procs = [subprocess.Popen(base + ["--method", m], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("gradsim", "if")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    logs = "".join(err for _, err in outs)
    assert logs.count("retrains to do") == 1 and logs.count("training the reference model") == 1
    assert len(list((tmp_path / "models" / "regression").rglob("model.pt"))) == 1


def test_two_kernel_studies_at_once_train_the_reference_model_once(tmp_path):
    """`tdabench kernel` takes the same locks as `run`: two started together on one results directory
    (two methods), one trains the reference model and the other waits, then loads it."""
    import subprocess

    common = ["--task", "regression", "--seeds", "1", "--set", "task.n_train=60", "--results-dir", str(tmp_path)]
    cmds = [[sys.executable, "-m", "tdabench.cli", "kernel", "--method", "if", *common],
            [sys.executable, "-m", "tdabench.cli", "kernel", "--method", "gradsim", *common]]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    logs = "".join(err for _, err in outs)
    assert logs.count("training the reference model") == 1
    assert len(list((tmp_path / "models" / "regression").rglob("model.pt"))) == 1


def test_runspec_takes_string_paths_and_refuses_wrong_types(tmp_path):
    spec = RunSpec(task="digits", methods=("gradsim",), results_dir=str(tmp_path), records_dir=str(tmp_path / "r"))
    assert spec.results_dir == tmp_path and spec.records_dir == tmp_path / "r"
    for bad, field in (({"methods": "gradsim"}, "RunSpec.methods"), ({"seeds": ()}, "RunSpec.seeds"),
                       ({"seeds": (0.5,)}, "RunSpec.seeds"), ({"results_dir": 3}, "RunSpec.results_dir"),
                       ({"at_checkpoint": -1}, "RunSpec.at_checkpoint")):
        with pytest.raises(ConfigError, match=re.escape(field)):
            RunSpec(task="digits", **{"methods": ("gradsim",), **bad})
