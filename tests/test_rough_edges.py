"""The rough edges a new user meets (issue #16, item 4): what `run` says it did and where, Ray's start-up,
sweep's stdout, scaling's missing exponents, the LaTeX board, and the plots' labels and order."""
from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tdabench import cli
from tdabench.engine.records import RunResult

TINY = ["--task", "regression", "--seeds", "1", "--serial", "--set", "gt.num_subsets=8", "--set", "task.n_train=20"]


def _cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


# a, c: `run` ends naming where it wrote, and says when it only shows stored records

def test_run_names_its_files_and_says_when_records_are_stored_ones(tmp_path, capsys):
    args = ["run", "--method", "gradsim", *TINY, "--results-dir", str(tmp_path)]
    code, out, _ = _cli(args, capsys)
    folder = next((tmp_path / "runs" / "regression" / "gradsim").iterdir())
    assert code == 0 and f"gradsim (seeds 0): records and score matrices written to {folder}/" in out
    assert (folder / "seed0.json").exists() and (folder / "seed0.scores.pt").exists()
    assert "--force" not in out

    code, out, _ = _cli(args, capsys)
    assert code == 0 and f"stored records shown as they are, from {folder}/ (score matrices there)" in out
    assert "1 of 1 record(s) were stored ones" in out and "--force recomputes them" in out

    (folder / "seed0.scores.pt").unlink()                  # as committed records are: no score matrix
    _, out, _ = _cli(args, capsys)
    assert "(no score matrices there)" in out

    _, out, _ = _cli(args + ["--force"], capsys)
    assert "written to" in out and "stored ones" not in out


def test_run_json_keeps_stdout_json_and_says_where_on_stderr(tmp_path, capsys):
    code, out, err = _cli(["run", "--method", "gradsim", *TINY, "--json", "--results-dir", str(tmp_path)], capsys)
    assert code == 0 and json.loads(out)[0]["method"] == "gradsim"
    assert f"written to {tmp_path / 'runs' / 'regression' / 'gradsim'}" in err


# b: Ray's start-up is announced, then timed

def test_ray_start_is_logged_before_and_after_with_its_time(caplog):
    from tdabench.engine.distributed import start_ray

    seen: list[list[str]] = []
    fake = SimpleNamespace(init=lambda **kw: seen.append([r.getMessage() for r in caplog.records]))
    with caplog.at_level(logging.INFO, logger="tdabench"):
        start_ray(fake, None, num_cpus=1)
    messages = [r.getMessage() for r in caplog.records]
    assert seen == [["starting a local Ray instance (the first start takes ~30 s) ..."]]   # said before init
    assert re.fullmatch(r"Ray started in \d+\.\d s", messages[-1])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tdabench"):
        start_ray(fake, "ray://head:10001")
    assert "joining the Ray cluster at ray://head:10001" in caplog.text and "Ray joined in" in caplog.text


# d: sweep keeps stdout for its result, with typed settings

def test_tune_console_output_goes_to_a_log_file(tmp_path, capsys):
    from tdabench.studies.sweep import quiet_stdout

    log_file = tmp_path / "sweeps" / "x.tune.log"
    with quiet_stdout(log_file):
        print("View detailed results here: ...\nTo visualize your results with TensorBoard, run: ...")
    assert capsys.readouterr().out == ""
    assert "TensorBoard" in log_file.read_text()


def _result(config: dict[str, str], lds: float) -> Any:
    return SimpleNamespace(config=config, error=None, metrics={"tune": lds, "seconds": 0.1, "heldout": lds,
                                                               "heldout_se": 0.01, "heldout_per_seed": [lds]})


class _Grid(list):
    def get_best_result(self, **_: Any) -> Any:
        return max(self, key=lambda r: r.metrics["tune"])


def test_sweep_report_and_output_show_typed_settings(tmp_path, capsys, monkeypatch):
    from tdabench.studies import sweep as sweep_module
    from tdabench.api.config import parse_set_args
    from tdabench.engine.spec import RunSpec
    from tdabench.studies.sweep import SweepSpec, _report, parse_grid

    run = RunSpec(task="regression", methods=("gradsim",), results_dir=tmp_path, executor="serial",
                  overrides=parse_set_args(["task.n_train=20"]))
    spec = SweepSpec(run=run, grid=parse_grid(["proj_dim=0,8", "normalize=true,false"], "gradsim"))
    grid = _Grid([_result({"proj_dim": "0", "normalize": "true"}, 0.7),
                  _result({"proj_dim": "8", "normalize": "false"}, 0.5)])
    report = _report(spec, grid)
    assert report["chosen"] == {"proj_dim": 0, "normalize": True}
    assert report["grid"] == {"proj_dim": [0, 8], "normalize": [True, False]}
    assert json.loads(Path(report["path"]).read_text())["trials"][1]["config"] == {"proj_dim": 8, "normalize": False}

    monkeypatch.setattr(sweep_module, "sweep", lambda _: {**report, "tune_log": "T.tune.log"})
    code, out, _ = _cli(["sweep", "--method", "gradsim", "--grid", "proj_dim=0,8", *TINY, "--results-dir",
                         str(tmp_path)], capsys)
    assert code == 0 and "{'proj_dim': 0, 'normalize': True}" in out and "'0'" not in out and "'true'" not in out
    assert "T.tune.log" in out and "Configuration for experiment" not in out


# e: a missing growth exponent says why

def test_missing_exponent_is_explained():
    from tdabench.cli.commands.scaling import format_exponents
    from tdabench.studies.scaling import exponent, exponent_note

    x = [10.0, 20.0, 40.0]
    assert exponent(x, [1.0, 2.0, 4.0]) == pytest.approx(1.0) and exponent_note(x, [1.0, 2.0, 4.0]) == ""
    no_fit = [0.0, 0.0, 0.0]
    assert math.isnan(exponent(x, no_fit)) and "0 of 3 points usable" in exponent_note(x, no_fit)
    assert "3 at or below 0.001: under 1 ms is timer noise" in exponent_note(x, no_fit)
    assert "1 with a non-positive size" in exponent_note([0.0, 20.0, 40.0], [1.0, 1.0, 0.0])
    assert math.isnan(exponent([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]))              # one size: no slope
    assert "3 at one and the same size" in exponent_note([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])
    line = format_exponents({"fit_seconds": math.nan, "score_seconds": 2.0, "peak_rss_mb": 0.5},
                            {"fit_seconds": exponent_note(x, no_fit)})
    assert line.startswith("fit — (0 of 3 points usable, needs 2 of different sizes")
    assert "score 2.00, peak memory 0.50" in line
    assert "nan" not in line


# f: every LaTeX special character is escaped in the board's cells

NASTY = r"path=C:\tmp\x^2 & 50% $y$ #1 a_b {z} ~w <1> | \\ end"


def _board_row(method_settings: str) -> dict[str, Any]:
    return {"rank": "1", "task": "t_1", "task_settings": "", "ground_truth": "α=0.5 K=100 R=1", "method": "m",
            "best_config": True, "stale": False, "method_settings": method_settings, "mean": 0.5, "se": 0.01,
            "seeds": [0, 1], "ceiling": None, "fraction_of_ceiling": None, "fit_seconds": 1.0, "score_seconds": 2.0,
            "peak_rss_mb": 100.0}


def _unescape(text: str) -> str:
    from tdabench.report.leaderboard import LATEX

    back = {v: k for k, v in LATEX.items()}
    pattern = "|".join(map(re.escape, sorted(back, key=len, reverse=True))) + "|."
    return "".join(back.get(tok, tok) for tok in re.findall(pattern, text, flags=re.S))


def test_latex_board_escapes_every_special_character(tmp_path):
    from tdabench.report.leaderboard import COLUMNS, LATEX, latex_escape, render

    escaped = latex_escape(NASTY)
    leftover = re.sub("|".join(map(re.escape, sorted(LATEX.values(), key=len, reverse=True))), "", escaped)
    assert not set(leftover) & set("&%$#_{}~^\\") and _unescape(escaped) == NASTY
    text = render([_board_row(NASTY)], "latex")
    line = next(x for x in text.splitlines() if x.startswith("1 & "))
    assert len(re.findall(r"(?<!\\)&", line)) == len(COLUMNS) - 1       # no cell adds a column
    assert line.count("\\\\") == 1 and line.endswith(r" \\")            # no cell ends the row
    assert r"$\alpha$=0.5" in line and r"t\_1" in line
    if shutil.which("pdflatex"):
        doc = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + text + "\\end{document}\n"
        (tmp_path / "board.tex").write_text(doc)
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "board.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]


# g: the LDS-vs-cost labels do not overlap

def _crowded_rows(n: int = 8) -> list[dict[str, Any]]:
    return [{"task": "t", "method": f"method-{i}", "mean": 0.5 + 0.001 * i, "se": 0.01, "fit_seconds": 1.0,
             "score_seconds": 1.0 + 0.01 * i, "peak_rss_mb": 500.0 + i} for i in range(n)]


def test_cost_plot_labels_do_not_overlap():
    from tdabench.report.plots import lds_vs_cost_figure

    fig = lds_vs_cost_figure(_crowded_rows(), "t")
    for dpi in (fig.dpi, 130):                    # the layout it was nudged at, and the saved PNG's
        fig.tight_layout()
        fig.set_dpi(dpi)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            assert len(ax.texts) == 8 and not _clashes(ax, renderer)
    for text in fig.axes[0].texts:                 # where they were: the example is crowded
        text.xyann = (5, 4)
    assert _clashes(fig.axes[0], fig.canvas.get_renderer())


def _clashes(ax: Any, renderer: Any) -> list[tuple[Any, Any]]:
    """Pairs of the axes' labels whose boxes share some area."""
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    return [(a, b) for a, b in itertools.combinations(boxes, 2)
            if min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)]


def test_cost_plot_writes_a_png(tmp_path):
    from tdabench.report.plots import lds_vs_cost

    path = lds_vs_cost(_crowded_rows(3), "t", tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# h: the per-query plot follows the leaderboard's ranking

def _record(root: Path, method: str, lds: float, alpha: float = 0.5) -> None:
    from tdabench.engine.groundtruth import GroundTruthConfig

    gt = {**GroundTruthConfig(alpha=alpha).settings(), "label": f"α={alpha:g} K=100 R=1"}
    rec = RunResult(task="regression", task_version="1", task_config={}, method=method, method_config={}, seed=0,
                    ground_truth=gt, metrics={"lds": {"value": lds, "per_query": [lds - 0.1, lds, lds + 0.1],
                                                      "ceiling": None, "version": "1", "code": ""}},
                    fit_seconds=1.0, score_seconds=1.0, peak_rss_mb=100.0)
    rec.save(root / "runs" / "regression" / method / f"k{alpha:g}" / "seed0.json")


def test_per_query_plot_is_in_leaderboard_order(tmp_path, monkeypatch):
    from tdabench.report import plots
    from tdabench.report.leaderboard import load_records

    for method, lds in (("gradsim", 0.1), ("if", 0.9), ("random", 0.5)):   # ranked: if, random, gradsim
        _record(tmp_path, method, lds)
    fig = plots.per_query_figure(load_records(tmp_path), "regression")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["if", "random", "gradsim"]
    fig = plots.per_query_figure(load_records(tmp_path), "regression", ["random", "if"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["random", "if", "gradsim"]

    orders: list[Any] = []
    real = plots.per_query

    def spy(rec: Any, task: str, path: Path, order: Any = None, regime: str = "") -> Path:
        orders.append(order)
        return real(rec, task, path, order, regime)

    monkeypatch.setattr(plots, "per_query", spy)
    assert cli.main(["plot", "--results-dir", str(tmp_path)]) == 0
    assert orders == [["if", "random", "gradsim"]]
    assert (tmp_path / "plots" / "regression-per-query.png").exists()


def test_plots_keep_ground_truth_regimes_apart(tmp_path, monkeypatch):
    """Two regimes of one task (α = 0.5 and 0.99): one set of plots each, each drawing only its own
    records, the regime in the file name and the title (their LDS are not comparable)."""
    from tdabench.report import plots

    for method, lds in (("gradsim", 0.1), ("if", 0.9)):
        _record(tmp_path, method, lds)
    _record(tmp_path, "random", 0.5, alpha=0.99)
    drawn: list[tuple[list[str], str]] = []
    real = plots.per_query

    def spy(rec: Any, task: str, path: Path, order: Any = None, regime: str = "") -> Path:
        drawn.append((sorted(r.method for r in rec), regime))
        return real(rec, task, path, order, regime)

    monkeypatch.setattr(plots, "per_query", spy)
    assert cli.main(["plot", "--results-dir", str(tmp_path)]) == 0
    assert sorted(drawn) == [(["gradsim", "if"], "α=0.5 K=100 R=1"), (["random"], "α=0.99 K=100 R=1")]
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == sorted(f"regression-{r}-{kind}.png" for r in ("a0.5-K100-R1", "a0.99-K100-R1")
                           for kind in ("lds", "lds-vs-cost", "per-query"))


def test_a_failed_sweep_trial_is_reported_by_its_cause_without_the_workers_traceback():
    from tdabench.toolkit.sgld import SamplerDivergence
    from tdabench.studies.sweep import cause

    class Wrapped(Exception):          # how Ray hands back a trial's exception: the traceback in its text
        def __init__(self, inner: BaseException) -> None:
            super().__init__(f"ray::ImplicitFunc.train()\n  File \"sweep.py\", line 94\n{type(inner).__name__}: {inner}")
            self.cause = inner

    inner = SamplerDivergence("chain 0 diverged at step 50: lower bif.epsilon (now 0.0003)")
    assert cause(Wrapped(inner)) == "SamplerDivergence: chain 0 diverged at step 50: lower bif.epsilon (now 0.0003)"
    assert cause(ValueError("bad")) == "ValueError: bad"
