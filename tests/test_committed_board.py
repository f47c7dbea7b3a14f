"""--force never rewrites records that git tracks (the committed board) unless --update-board is
given; untracked records and other directories are recomputed as before (issue #17, item 7)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tdabench.cli.main import main

TINY = ["--task", "regression", "--method", "gradsim", "--seeds", "1", "--serial", "--set", "gt.num_subsets=8",
        "--set", "task.n_train=30", "--set", "task.n_query=4"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", *args], cwd=repo, check=True,
                   capture_output=True)


def test_force_leaves_committed_records_alone_unless_the_board_update_is_asked_for(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    results = repo / "results"
    assert main(["run", *TINY, "--results-dir", str(results)]) == 0
    record = next(results.rglob("seed0.json"))
    _git(repo, "add", str(record.relative_to(repo)))
    _git(repo, "commit", "-q", "-m", "board")
    before = record.read_text()
    capsys.readouterr()

    assert main(["run", *TINY, "--results-dir", str(results), "--force"]) == 2
    err = capsys.readouterr().err
    assert "--force would rewrite 1 committed record(s)" in err and "--update-board" in err and "--results-dir" in err
    assert "Traceback" not in err and record.read_text() == before          # refused before any work

    assert main(["run", *TINY, "--results-dir", str(results), "--force", "--update-board"]) == 0
    assert record.read_text() != before                                       # rewritten on purpose (new time stamp)


def test_force_recomputes_untracked_records_as_before(tmp_path, capsys):
    assert main(["run", *TINY, "--results-dir", str(tmp_path)]) == 0          # not a git checkout at all
    record = next(tmp_path.rglob("seed0.json"))
    before = record.read_text()
    assert main(["run", *TINY, "--results-dir", str(tmp_path), "--force"]) == 0
    assert record.read_text() != before


STAGEWISE = ["stagewise", "--task", "regression", "--method", "gradsim", "--checkpoints", "2", "--seeds", "1", "--serial",
             "--set", "gt.num_subsets=8", "--set", "task.n_train=30", "--set", "task.n_query=4",
             "--set", "task.optimizer=gd", "--set", "task.steps=20"]


def test_stagewise_writes_beside_a_committed_report_unless_the_board_update_is_asked_for(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    results = repo / "results"
    assert main([*STAGEWISE, "--results-dir", str(results)]) == 0
    report = results / "stagewise" / "regression.json"
    _git(repo, "add", str(report.relative_to(repo)))
    _git(repo, "commit", "-q", "-m", "board")
    before = report.read_text()

    assert main([*STAGEWISE, "--results-dir", str(results), "--set", "task.steps=30"]) == 0
    beside = sorted(p.name for p in report.parent.glob("regression-*"))
    assert report.read_text() == before                                       # the committed report untouched
    assert len(beside) == 2 and beside[0].endswith(".json") and beside[1].endswith(".png")   # <key>.json, .png

    assert main([*STAGEWISE, "--results-dir", str(results), "--set", "task.steps=30", "--update-board"]) == 0
    assert report.read_text() != before                                       # rewritten on purpose
