"""The runner and CLI end to end: LDS on digits, records, reuse, and early failures."""
from __future__ import annotations

import dataclasses
import json
import sys
import threading
from pathlib import Path

import pytest

from tdabench import cli
from tdabench.api.registry import Registry
from tdabench.engine.pipeline import evaluate as run
from tdabench.engine.spec import RunSpec, check_writable


def test_digits_random_is_near_zero_and_gradient_methods_are_clearly_above(tmp_path):
    spec = RunSpec(task="digits", methods=("random", "gradsim", "if"), seeds=(0,), results_dir=tmp_path,
                   executor="serial")
    summaries, failures = run(spec)
    assert not failures
    by = {s["method"]: s for s in summaries}
    assert abs(by["random"]["mean"]) < 0.05
    assert by["gradsim"]["mean"] > 0.1 and by["if"]["mean"] > 0.1


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output_records_and_second_run_reuses_everything(tmp_path, capsys, monkeypatch):
    args = ["run", "--task", "regression", "--method", "gradsim,if", "--seeds", "2", "--serial", "--json",
            "--set", "gt.num_subsets=12", "--set", "task.n_train=40", "--results-dir", str(tmp_path)]
    code, out, _ = _cli(args, capsys)
    assert code == 0
    summaries = json.loads(out)                    # stdout is only the JSON array
    assert [s["method"] for s in summaries] == ["gradsim", "if"]
    for key in ("task", "ground_truth", "method", "config", "seeds", "metric", "mean", "se", "per_seed", "ceiling",
                "fraction_of_ceiling", "fit_seconds", "score_seconds", "peak_rss_mb"):
        assert key in summaries[0]
    assert summaries[0]["metric"] == "lds" and summaries[0]["ground_truth"] == "α=0.5 K=12 R=1"
    records = sorted((tmp_path / "runs").rglob("seed*.json"))
    assert len(records) == 4
    record = json.loads(records[0].read_text())
    assert record["environment"]["versions"]["torch"] and len(record["metrics"]["lds"]["per_query"]) == 50
    assert 0 < record["environment"]["rss_at_start_mb"] <= record["peak_rss_mb"]   # what the peak counts from
    assert (records[0].parent / record["scores_file"]).exists()          # the score matrix is kept

    from tdabench.tasks.regression import Regression
    calls = []
    monkeypatch.setattr(Regression, "train", lambda *a, **k: calls.append(1))
    code, again, _ = _cli(args, capsys)
    assert code == 0 and calls == []               # no retraining, no reference training
    assert json.loads(again) == summaries


@pytest.mark.parametrize("args, message", [
    (["run", "--task", "digits", "--method", "gradsm"], "Did you mean 'gradsim'"),
    (["run", "--task", "digit", "--method", "gradsim"], "Did you mean 'digits'"),
    (["run", "--task", "digits", "--method", "gradsim", "--set", "task.n_trian=5"], "valid keys: task.n_train"),
    (["run", "--task", "digits", "--method", "gradsim", "--set", "task.n_train=many"], "task.n_train='many': must be int"),
    (["run", "--task", "digits", "--method", "gradsim", "--set", "if.damping=1"], "match nothing"),
    (["run", "--task", "digits", "--method", "if", "--set", "if.curvature=exact"], "gauss_newton, hessian"),
    (["run", "--task", "digits", "--method", "gradsim", "--set", "gt.alpha=1.5"], "strictly between 0 and 1"),
    (["run", "--task", "digits", "--method", "gradsim", "--set", "oops"], "SCOPE.KEY=VALUE"),
    (["run", "--task", "digits", "--method", ","], "names no method"),
    (["run", "--task", "digits", "--method", "gradsim", "--threads", "0"], "--threads 0: must be at least 1"),
    (["run", "--task", "digits", "--method", "gradsim", "--device", "tpu"], "--device 'tpu'"),
    (["sweep", "--task", "digits", "--method", "gradsim", "--grid", "proj_dim=0,8", "--samples", "-1"], "--samples -1"),
    (["run", "--task", "digits", "--method", "gradsim", "--seeds", "0,0"], "seed(s) 0 repeated"),
    (["run", "--task", "digits", "--method", "if", "--set", "task.hidden=100000"], "above if.max_params=10,000"),
    (["run", "--task", "digits", "--method", "gradsim", "--seeds", "0"], "for seed 0 alone give --seeds 1"),
    (["plan", "--task", "digits", "--method", "gradsim", "--device", "tpu"], "--device 'tpu': plan for auto, cpu or cuda"),
])
def test_bad_input_fails_early_with_a_fix(args, message, capsys, tmp_path):
    code, out, err = _cli(args + ["--results-dir", str(tmp_path)], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "ground_truth").exists()   # nothing expensive started


def test_unwritable_results_dir_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _cli(["run", "--task", "digits", "--method", "gradsim", "--results-dir", str(blocker / "sub")], capsys)
    assert code == 2 and "not writable" in err and "--results-dir" in err


def test_list_shows_tasks_methods_and_defaults(capsys):
    code, out, _ = _cli(["list"], capsys)
    assert code == 0
    for needle in ("digits", "regression", "gradsim", "random", "if", "damping (float) = 0.001  # λ added"):
        assert needle in out


def test_every_registered_config_field_is_documented():
    """`tdabench list` shows each field's comment: a field added without one fails here."""
    from tdabench.api.config import field_docs
    from tdabench.api.registry import METHODS, TASKS

    undocumented = [f"{reg.kind} {name}: {field.name}" for reg in (TASKS, METHODS) for name in reg.names()
                    for field in dataclasses.fields(reg.get(name).Config)
                    if not field_docs(reg.get(name).Config).get(field.name)]
    assert not undocumented, f"fields without a trailing # comment: {undocumented}"


def test_third_party_entry_points_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "thirdparty_tda.py").write_text(
        "from tdabench.api.method import Method\n"
        "class Mine(Method):\n    name = 'mine'\n")
    dist = tmp_path / "thirdparty_tda-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-tda\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tdabench.methods]\nmine = thirdparty_tda:Mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", "tdabench.methods", "tdabench.methods")
    assert "mine" in registry.names()
    assert registry.get("mine").__name__ == "Mine"



def test_concurrent_write_checks_of_one_directory_never_fail(tmp_path):
    """Trials of a sweep (and runs sharing a results directory) check it at the same moment: each probe
    must be its own file, or one check's clean-up deletes another's probe and reports the directory as
    unwritable (seen in a hierarchy sweep: 'not writable (No such file or directory)')."""
    errors = []

    def check() -> None:
        for _ in range(300):
            try:
                check_writable(tmp_path)
            except PermissionError as err:
                errors.append(err)
                return

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert list(tmp_path.iterdir()) == []                     # no probe left behind


def test_list_says_which_methods_apply_as_run_refuses_them(tmp_path):
    """`tdabench list`'s applicability line agrees with what `prepare` refuses before any work."""
    from tdabench.engine import pipeline
    from tdabench.cli.commands.listing import applicability
    from tdabench.api.config import ConfigError
    from tdabench.api.registry import METHODS
    from tdabench.engine.spec import RunSpec

    line = applicability("hierarchy")
    refused = {m for m in METHODS.names() if f"{m} (" in line.split("refused: ", 1)[-1]}
    assert refused == {"knn_shapley", "rps"} and line.startswith(f"{len(METHODS.names()) - 2} of {len(METHODS.names())}")
    for method in ("rps", "gradsim"):
        spec = RunSpec(task="hierarchy", methods=(method,), results_dir=tmp_path, executor="serial")
        if method in refused:
            with pytest.raises((ConfigError, ValueError), match="classification"):
                pipeline.prepare(spec)
        else:
            pipeline.prepare(spec)
