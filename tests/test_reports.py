"""Leaderboards and the regression check, read from real run records."""
from __future__ import annotations

import json

import pytest

from tdabench import cli
from tdabench.report.leaderboard import leaderboard, rank
from tdabench.studies.baseline_check import regress

SMALL = ["gt.num_subsets=10", "task.n_train=40", "task.optimizer=gd", "task.steps=100", "task.lr=1.0"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Records of gradsim (two configs) and tracin on a small regression task, 2 seeds."""
    root = tmp_path_factory.mktemp("results")
    base = ["run", "--task", "regression", "--seeds", "2", "--serial", "--results-dir", str(root)]
    sets = [x for s in SMALL for x in ("--set", s)]
    assert cli.main(base + ["--method", "gradsim,tracin"] + sets) == 0
    assert cli.main(base + ["--method", "gradsim", "--set", "gradsim.normalize=true"] + sets) == 0
    return root


def test_leaderboard_renders_every_format(results):
    md = leaderboard(results, fmt="md")
    assert md.count("| regression") == 3 and "normalize=True" in md and "n_train=40" in md
    csv_text = leaderboard(results, fmt="csv")
    assert len(csv_text.strip().splitlines()) == 4
    assert r"\begin{tabular}" in leaderboard(results, fmt="latex")
    rows = json.loads(leaderboard(results, fmt="json"))
    assert {r["method"] for r in rows} == {"gradsim", "tracin"}
    assert sum(r["best_config"] for r in rows if r["method"] == "gradsim") == 1
    assert all(len(r["seeds"]) == 2 for r in rows)


def test_ranks_tie_within_one_combined_se():
    def row(method, mean, se):
        return {"task": "t", "ground_truth": "α=0.5 K=100 R=1", "method": method, "mean": mean, "se": se}

    ranked = rank([row("a", 0.50, 0.02), row("b", 0.48, 0.02), row("c", 0.30, 0.01), row("d", 0.10, 0.0)])
    assert [r["rank"] for r in ranked] == ["=1", "=1", "3", "4"]


def test_missing_records_fail_with_a_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="tdabench run"):
        leaderboard(tmp_path)


def test_regress_passes_then_fails_when_a_baseline_is_raised_above_reach(results, tmp_path):
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"checks": [{"task": "regression", "methods": ["gradsim"], "seeds": 2, "set": SMALL}]}))
    report, failures = regress(path, results, executor="serial")
    assert failures == [] and any("baseline written" in line for line in report)
    assert json.loads(path.read_text())["calibration_seconds"] > 0          # the machine's speed, written with them
    report, failures = regress(path, results, executor="serial")
    assert failures == [] and [line for line in report if line.startswith("regression/gradsim")][0].endswith("ok")
    spec = json.loads(path.read_text())
    spec["checks"][0]["baselines"]["gradsim"]["lds_mean"] += 0.5
    path.write_text(json.dumps(spec))
    _, failures = regress(path, results, executor="serial")
    assert len(failures) == 1 and "below the baseline" in failures[0]
    spec["checks"][0]["baselines"]["gradsim"]["lds_mean"] -= 0.5
    spec["checks"][0]["baselines"]["gradsim"]["seconds"] = -10.0       # a time nobody can beat
    path.write_text(json.dumps(spec))
    _, failures = regress(path, results, executor="serial")
    assert len(failures) == 1 and "fit+score took" in failures[0]


def test_time_limits_scale_with_how_busy_the_machine_is(results, tmp_path, monkeypatch):
    from tdabench.studies import baseline_check

    now = {"lds_mean": 0.5, "lds_se": 0.0, "fit_seconds": 10.0, "score_seconds": 0.0}
    base = {"lds_mean": 0.5, "lds_se": 0.0, "seconds": 1.0}
    assert baseline_check.compare("t/m", now, base, 2.0, 4.0, 2.0)                 # 10 s > 4 × 1 s + 2 s
    assert baseline_check.compare("t/m", now, base, 2.0, 4.0, 2.0, slowdown=3.0) == []   # busy 3×: 14 s allowed
    assert baseline_check.compare("t/m", now, base, 2.0, 4.0, 2.0, slowdown=0.2)    # a fast machine keeps the limit
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"checks": [{"task": "regression", "methods": ["gradsim"], "seeds": 2, "set": SMALL}]}))
    regress(path, results, executor="serial")
    spec = json.loads(path.read_text())
    spec["checks"][0]["baselines"]["gradsim"]["seconds"] = 1e-6                    # beaten only on an idle machine ...
    spec["time_slack_seconds"] = 0.0
    path.write_text(json.dumps(spec))
    _, failures = regress(path, results, executor="serial")
    assert failures and "fit+score took" in failures[0]
    slow = spec["calibration_seconds"] * 1e6                                        # ... the machine now a million times slower
    monkeypatch.setattr(baseline_check, "machine_seconds", lambda repeats=5: slow)
    report, failures = regress(path, results, executor="serial")
    assert failures == [] and any("slower than when the baselines were written" in line for line in report)


def test_growth_exponent_recovers_a_power_law():
    from tdabench.studies.scaling import exponent

    x = [10.0, 20.0, 40.0, 80.0]
    assert exponent(x, [3 * v**2 for v in x]) == pytest.approx(2.0)
    assert exponent(x, [0.5 * v**0.5 for v in x]) == pytest.approx(0.5)


def test_scaling_study_and_plots_write_their_files(results, tmp_path):
    from tdabench.engine.spec import RunSpec
    from tdabench.studies.scaling import scaling_study

    run = RunSpec(task="regression", methods=("gradsim", "if"), seeds=(0,), results_dir=tmp_path, executor="serial")
    study = scaling_study(run, "task.n_train=20,40,80")
    assert [p["n_train"] for p in study["points"]["if"]] == [20, 40, 80]
    assert set(study["exponents"]["if"]) == {"fit_seconds", "score_seconds", "peak_rss_mb"}
    assert open(study["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", "--results-dir", str(results)]) == 0
    assert len(list((results / "plots").glob("regression-*.png"))) == 3


@pytest.mark.parametrize("bursts, expected", [
    ([200], ["200/200"]),                                   # one chunk: one line, when it is done
    ([60, 60, 80], ["60/200", "120/200", "200/200"]),       # three chunks: a line after each
    ([1] * 10, [f"{k}/10" for k in range(1, 11)]),          # one at a time: every 10 %
])
def test_progress_reports_a_chunk_as_the_one_step_it_is(bursts, expected, monkeypatch, caplog):
    """Results of a chunk arrive together: one line for the chunk (written once it has ended), not a line
    for every 10 % inside it — before, a chunk of 200 wrote ten lines in the same second."""
    import time

    from tdabench.toolkit import progress

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level("INFO", logger="tdabench"):
        with progress.Progress(sum(bursts), "retrain t seed 0") as bar:
            for size in bursts:
                for _ in range(size):
                    bar.update()
                time.sleep(4 * progress.BURST_SECONDS)      # the next chunk trains
    assert [r.getMessage().split(": ")[1].split(" ")[0] for r in caplog.records] == expected
