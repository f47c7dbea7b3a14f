"""``tdabench board``: the README's tables, the leaderboard and the site are the records' — and the board
settles stale rows by rerunning one seed."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tdabench import cli
from tdabench.engine import pipeline
from tdabench.report.board import board, pages, readme_blocks, render_readme
from tdabench.report.board_tables import BLOCKS
from tdabench.report.leaderboard import load_records
from tdabench.engine.records import RunResult
from tdabench.engine.spec import RunSpec

REPO = Path(__file__).resolve().parent.parent
SMALL = {"task": {"n_train": "40", "n_query": "10"}, "gt": {"num_subsets": "12"}}


@pytest.fixture(scope="module")
def committed() -> list[RunResult]:
    return load_records(REPO / "results")


def test_every_table_is_rendered_from_the_committed_records(committed):
    """The README and the docs pages hold every board table (each at least once) exactly as the records render it."""
    found = []
    for page in pages(REPO / "README.md"):
        text = page.read_text()
        found += readme_blocks(text)
        rendered = render_readme(text, committed)
        for name in readme_blocks(text):                          # name the first table that differs
            assert _block(rendered, name) == _block(text, name), f"table {name} of {page.name} differs from the " \
                                                                  f"records: run `tdabench board`"
        assert rendered == text
    assert set(found) == set(BLOCKS)
    assert {REPO / "README.md", REPO / "docs" / "benchmarks.md"} <= set(pages(REPO / "README.md"))


def test_board_renders_and_checks_the_docs_pages_beside_the_readme(tmp_path, committed):
    """A block in ``docs/*.md`` is rendered by ``board`` and a typed figure there makes ``--check`` fail."""
    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    docs.mkdir()
    readme.write_text("# r\n")
    (docs / "page.md").write_text("<!-- board:cpu-digits -->\n| typed |\n<!-- /board:cpu-digits -->\n")
    assert [p.name for p in pages(readme)] == ["README.md", "page.md"]
    _run(tmp_path / "results")
    lines, changed = board(tmp_path / "results", readme, check=True)
    assert changed and any(str(docs / "page.md") in line for line in lines)
    assert (docs / "page.md").read_text().count("| typed |") == 1              # --check wrote nothing


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- board:{name} -->")[1].split(f"<!-- /board:{name} -->")[0]


def test_a_changed_record_changes_its_readme_table(committed):
    text = (REPO / "docs" / "methods.md").read_text()
    records = copy.deepcopy(committed)
    target = next(r for r in records if r.task == "regression" and r.method == "magic"
                  and r.ground_truth.get("order") == "reference" and r.ground_truth["alpha"] == 0.99)
    target.metrics["lds"]["value"] = 0.5
    rendered = render_readme(text, records)
    assert _block(rendered, "magic-regression") != _block(text, "magic-regression")
    assert _block(rendered, "magic-digits") == _block(text, "magic-digits")


def test_an_unknown_block_is_named():
    with pytest.raises(ValueError, match="'nope' is not a board table"):
        render_readme("<!-- board:nope -->\nx\n<!-- /board:nope -->\n", [])


def test_the_committed_board_is_current(tmp_path):
    """No committed record is stale, and the leaderboard, the README's tables and the site are what the
    records render: a change of code that moves a number, or a typed figure, fails here."""
    lines, changed = board(REPO / "results", REPO / "README.md", check=True)
    assert not changed, "\n".join(lines) + "\nrun `tdabench board` (it reruns what is stale and renders the rest)"


def _run(tmp_path: Path) -> list[Path]:
    pipeline.evaluate(RunSpec(task="regression", methods=("gradsim", "random"), seeds=(0, 1), results_dir=tmp_path,
                              executor="serial", overrides=SMALL))
    return sorted(tmp_path.rglob("seed*.json"))


def test_board_settles_a_stale_row_renders_and_then_has_nothing_to_do(tmp_path, capsys):
    paths = [p for p in _run(tmp_path) if "/gradsim/" in str(p)]
    for path in paths:
        record = json.loads(path.read_text())
        record["code"]["tdabench.methods.gradsim"] = "0" * 16
        path.write_text(json.dumps(record))
    args = ["board", "--results-dir", str(tmp_path), "--readme", str(tmp_path / "none.md"), "--jobs", "1"]
    assert cli.main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert "regression/gradsim α=0.5 K=12 R=1 (seeds 0,1): stale" in out and "would rewrite" in out and "changes found" in out
    assert not (tmp_path / "leaderboard.md").exists()                    # --check writes nothing
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "reproduced identically; fingerprints refreshed" in out and "board updated" in out
    assert (tmp_path / "leaderboard.md").exists() and (tmp_path / "site" / "index.html").exists()
    assert "gradsim * (stale)" not in (tmp_path / "leaderboard.md").read_text()
    assert cli.main([*args, "--check"]) == 0
    assert "nothing changed" in capsys.readouterr().out


def test_board_all_reruns_current_rows_in_parallel_and_finds_a_typed_number(tmp_path, capsys):
    paths = _run(tmp_path)
    args = ["board", "--results-dir", str(tmp_path), "--readme", str(tmp_path / "none.md"), "--jobs", "2"]
    assert cli.main(args) == 0                                            # renders the board once
    capsys.readouterr()
    assert cli.main([*args, "--all", "--check"]) == 0                     # every row reproduced, nothing differs
    out = capsys.readouterr().out
    assert out.count("reproduced identically") == 2 and "nothing changed" in out
    target = next(p for p in paths if "/gradsim/" in str(p) and p.name == "seed0.json")
    record = json.loads(target.read_text())
    record["metrics"]["lds"]["per_query"][0] += 0.1                        # a number no rerun gives
    target.write_text(json.dumps(record))
    assert cli.main([*args, "--all", "--check"]) == 1
    assert "regression/gradsim" in capsys.readouterr().out
    assert json.loads(target.read_text()) == record                        # --check wrote nothing


def test_an_empty_block_is_found_and_filled(committed):
    """A block a writer has just added, with nothing between its markers, is rendered like any other."""
    text = "intro\n<!-- board:breadth -->\n<!-- /board:breadth -->\nafter\n"
    assert readme_blocks(text) == ["breadth"]
    rendered = render_readme(text, committed)
    assert "| method |" in _block(rendered, "breadth") and rendered.endswith("\n<!-- /board:breadth -->\nafter\n")
    assert render_readme(rendered, committed) == rendered                       # and stays as it is


def test_a_setting_the_method_no_longer_has_is_dropped_and_the_numbers_decide(tmp_path, capsys, caplog):
    """A record made when the method had a setting it has since lost (cg.tol, which dattri never read) is
    reproduced without it, saying so; identical numbers move the row to its new settings."""
    paths = [p for p in _run(tmp_path) if "/gradsim/" in str(p)]
    for path in paths:
        record = json.loads(path.read_text())
        record["method_config"]["tol"] = 1e-7
        record["code"]["tdabench.methods.gradsim"] = "0" * 16
        path.write_text(json.dumps(record))
    key = paths[0].parent
    key.rename(key.with_name("0" * 16))                       # where a config with the setting had put it
    args = ["board", "--results-dir", str(tmp_path), "--readme", str(tmp_path / "none.md"), "--jobs", "1"]
    with caplog.at_level("INFO", logger="tdabench"):
        assert cli.main(args) == 0
    assert "the record's gradsim.tol no longer exists; reproducing without" in caplog.text
    assert "reproduced identically" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in key.glob("seed*.json")]      # back under the key it resolves to
    assert len(records) == 2 and all("tol" not in r["method_config"] for r in records)
    assert not key.with_name("0" * 16).exists()
