"""Fingerprints follow meaning: formatting, comments, docstrings and a module's place change nothing; an
expression does.  ``verify --reproduce`` settles a stale row by recomputing one seed."""
from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest

from tdabench import cli
from tdabench.engine import pipeline
from tdabench.engine.fingerprint import (
    changes, digest, fingerprint, legacy_digest, legacy_fingerprint, meaning_hash, same_code,
)
from tdabench.engine.records import RunResult
from tdabench.engine.reproduce import current_codes, legacy_codes, reproduce
from tdabench.engine.spec import RunSpec

REPO = Path(__file__).resolve().parent.parent
SOURCE = (REPO / "tdabench" / "toolkit" / "batched.py").read_text()     # a real toolkit module, 200 lines
SMALL = {"task": {"n_train": "40", "n_query": "10"}, "gt": {"num_subsets": "12"}}


def test_reformatting_a_module_keeps_its_hash():
    reformatted = ast.unparse(ast.parse(SOURCE))     # every line laid out anew, quotes and parentheses changed
    assert reformatted != SOURCE
    assert meaning_hash(reformatted) == meaning_hash(SOURCE)


def test_comments_and_docstrings_keep_the_hash():
    edited = SOURCE.replace("# ", "# reworded: ", 3).replace('"""', '"""Reworded. ', 1)
    edited = edited.replace("def in_groups(", 'def in_groups(', 1) + "\n# a trailing comment\n"
    assert edited != SOURCE
    assert meaning_hash(edited) == meaning_hash(SOURCE)
    with_docstring = SOURCE.replace("def in_groups(", "def _new(x):\n    'a docstring only'\n\n\ndef in_groups(", 1)
    assert meaning_hash(with_docstring) != meaning_hash(SOURCE)   # a new function is new code, docstring or not


@pytest.mark.parametrize("old, new", [("t + 1 in ended", "t + 2 in ended"), ("torch.float32", "torch.float64"),
                                      ("(1 - b1**self.count)", "(1 - b2**self.count)"), ("p - lr", "p + lr")])
def test_changing_an_expression_changes_the_hash(old, new):
    assert old in SOURCE
    assert meaning_hash(SOURCE.replace(old, new, 1)) != meaning_hash(SOURCE)


def _package(root: Path, inner: str) -> Path:
    """``pkg_fp.a`` computes with ``f`` from ``pkg_fp.<inner>b``; the folder that holds ``pkg_fp``."""
    where = root / "pkg_fp" / Path(*inner.split(".")[:-1])
    where.mkdir(parents=True)
    for folder in {root / "pkg_fp", where}:
        (folder / "__init__.py").write_text("")
    (where / "b.py").write_text("def f(x):\n    return 2 * x\n")
    (root / "pkg_fp" / "a.py").write_text(f"from .{inner}b import f\n\n\ndef g(x):\n    return f(x) + 1\n")
    return root


def _fresh_fingerprint(root: Path, monkeypatch) -> dict[str, str]:
    for name in [n for n in sys.modules if n == "pkg_fp" or n.startswith("pkg_fp.")]:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return fingerprint(importlib.import_module("pkg_fp.a").g)


def test_moving_a_module_keeps_the_fingerprint(tmp_path, monkeypatch):
    before = _fresh_fingerprint(_package(tmp_path / "one", ""), monkeypatch)
    after = _fresh_fingerprint(_package(tmp_path / "two", "toolkit."), monkeypatch)
    assert sorted(before) == ["pkg_fp.a", "pkg_fp.b"] and sorted(after) == ["pkg_fp.a", "pkg_fp.toolkit.b"]
    assert before["pkg_fp.a"] == after["pkg_fp.a"]        # the import's new path is not a change of code
    assert same_code(before, after) and digest(before) == digest(after)
    (tmp_path / "two" / "pkg_fp" / "toolkit" / "b.py").write_text("def f(x):\n    return 3 * x\n")
    changed = _fresh_fingerprint(tmp_path / "two", monkeypatch)
    assert not same_code(before, changed)
    assert changes(before, changed) == "now also uses: pkg_fp.toolkit.b; no longer uses: pkg_fp.b"
    assert changes(after, changed) == "changed: pkg_fp.toolkit.b"


def test_legacy_fingerprints_are_the_file_bytes():
    import hashlib

    from tdabench.toolkit import batched

    legacy = legacy_fingerprint(batched)
    assert legacy["tdabench.toolkit.batched"] == hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    assert legacy_digest(legacy) == hashlib.sha256(repr(sorted(legacy.items())).encode()).hexdigest()[:16]
    assert fingerprint(batched).keys() == legacy.keys()


def _spec(tmp_path: Path, seeds=(0, 1)) -> RunSpec:
    return RunSpec(task="regression", methods=("gradsim",), seeds=seeds, results_dir=tmp_path, executor="serial",
                   overrides=SMALL)


def _tamper(path: Path, **changes_) -> dict:
    record = json.loads(path.read_text())
    for key, fn in changes_.items():
        fn(record)
    path.write_text(json.dumps(record))
    return record


def test_reproduce_refreshes_the_fingerprint_of_a_row_whose_numbers_did_not_change(tmp_path, capsys):
    pipeline.evaluate(_spec(tmp_path))
    paths = sorted(tmp_path.rglob("seed*.json"))
    for path in paths:   # as if gradsim's code had changed in a way that moves no number
        _tamper(path, code=lambda r: r["code"].update({"tdabench.methods.gradsim": "0" * 16}),
                fit=lambda r: r.update(fit_seconds=123.0))
    assert cli.main(["verify", "--results-dir", str(tmp_path)]) == 1
    assert cli.main(["verify", "--results-dir", str(tmp_path), "--reproduce", "--serial"]) == 0
    out = capsys.readouterr().out
    assert "regression/gradsim" in out and "seed 0 reproduced identically; fingerprints refreshed" in out
    for path in paths:
        record = RunResult.load(path)
        assert record.fit_seconds == 123.0                         # numbers and timings kept
        assert record.environment["refreshed"]["how"].startswith("reproduced")
        assert same_code(record.code, current_codes(record).scores)
    assert not (tmp_path / "reproduce").exists() or not any((tmp_path / "reproduce").iterdir())


def test_reproduce_recomputes_a_row_whose_numbers_changed(tmp_path, capsys):
    pipeline.evaluate(_spec(tmp_path))
    paths = sorted(tmp_path.rglob("seed*.json"))
    truth = [RunResult.load(p).metrics["lds"]["value"] for p in paths]
    for path in paths:   # stale code that made other numbers
        _tamper(path, code=lambda r: r["code"].update({"tdabench.methods.gradsim": "0" * 16}),
                lds=lambda r: r["metrics"]["lds"].update(value=0.999, per_query=[0.999] * 10))
    assert cli.main(["verify", "--results-dir", str(tmp_path), "--reproduce", "--serial"]) == 0
    out = capsys.readouterr().out
    assert "numbers changed (lds 0.9990 →" in out and "recomputed, seeds 0,1" in out
    assert [RunResult.load(p).metrics["lds"]["value"] for p in paths] == pytest.approx(truth, abs=0)
    assert all("refreshed" not in RunResult.load(p).environment for p in paths)


def _old_schema(tmp_path: Path, lds=None) -> tuple[list[Path], Path]:
    """The row's records as an older gradsim config (without its ``batch_size`` field) left them: under
    another key, with that field missing and stale code."""
    pipeline.evaluate(_spec(tmp_path))
    paths = sorted(tmp_path.rglob("seed*.json"))
    current = paths[0].parent
    old = current.with_name("0123456789abcdef")
    current.rename(old)
    for path in sorted(old.glob("seed*.json")):
        _tamper(path, code=lambda r: r["code"].update({"tdabench.methods.gradsim": "0" * 16}),
                config=lambda r: r["method_config"].pop("batch_size"), lds=lds or (lambda r: None))
    return sorted(old.glob("seed*.json")), current


def test_reproduce_moves_a_row_whose_config_gained_a_field_to_its_new_key(tmp_path, capsys):
    paths, current = _old_schema(tmp_path)
    values = [RunResult.load(p).metrics["lds"]["value"] for p in paths]
    assert cli.main(["verify", "--results-dir", str(tmp_path), "--reproduce", "--serial"]) == 0
    assert f"moved to {current}" in capsys.readouterr().out
    assert not paths[0].parent.exists()
    moved = [RunResult.load(current / p.name) for p in paths]
    assert [r.metrics["lds"]["value"] for r in moved] == values                 # numbers kept
    assert all(r.method_config["batch_size"] == 64 and same_code(r.code, current_codes(r).scores) for r in moved)
    assert all((current / r.scores_file).exists() for r in moved)               # the score matrices moved too
    assert cli.main(["verify", "--results-dir", str(tmp_path)]) == 0            # nothing stale is left


def test_reproduce_leaves_a_rekeyed_row_whose_numbers_changed_and_says_so(tmp_path, capsys):
    paths, current = _old_schema(tmp_path, lds=lambda r: r["metrics"]["lds"].update(value=0.5, per_query=[0.5] * 10))
    assert cli.main(["verify", "--results-dir", str(tmp_path), "--reproduce", "--serial"]) == 1   # still stale: said
    assert "its numbers changed" in capsys.readouterr().out
    assert all(p.exists() and RunResult.load(p).metrics["lds"]["value"] == 0.5 for p in paths)


def test_reproduce_upgrades_byte_fingerprints_of_unchanged_code_without_a_rerun(tmp_path, capsys, monkeypatch):
    pipeline.evaluate(_spec(tmp_path, seeds=(0,)))
    path = next(tmp_path.rglob("seed0.json"))
    record = RunResult.load(path)
    old = legacy_codes(record)
    _tamper(path, code=lambda r: r.update(code=old.scores),
            truth=lambda r: r["ground_truth"].update(code=old.truth),
            metric=lambda r: r["metrics"]["lds"].update(code=old.metrics["lds"][1]))
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: pytest.fail("nothing should be rerun"))
    lines = reproduce(tmp_path, executor="serial")
    assert lines == ["1 record(s) made by byte-identical code: fingerprints upgraded, nothing rerun"]
    upgraded = RunResult.load(path)
    assert upgraded.environment["refreshed"]["how"].startswith("upgraded")
    assert upgraded.code == current_codes(upgraded).scores
    # bytes that changed since are not upgraded: that record stays stale for a rerun to settle
    _tamper(path, code=lambda r: r.update(code={**old.scores, "tdabench.methods.gradsim": "1" * 16}))
    assert RunResult.load(path).code != legacy_codes(RunResult.load(path)).scores


def test_reproduce_names_an_unknown_task_before_any_work(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cli.main(["verify", "--results-dir", str(tmp_path), "--reproduce", "--task", "nope"]) != 0
    assert "nope" in capsys.readouterr().err
