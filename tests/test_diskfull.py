"""A full disk during a ground-truth build (issue 17): the run stops with exit 1 and one line naming the
directory, removes its partial temporary file, keeps every piece written completely, and the same
command resumes from them.  On a real 128 KiB tmpfs where the machine allows mounting one, and with
a writer that fails as torch's does everywhere."""
from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tdabench import cli
from tdabench.toolkit import diskspace, files
from tdabench.engine.groundtruth import GroundTruthConfig, load_ground_truth
from tdabench.tasks.regression import Regression, RegressionConfig

BUILD = ["ground-truth", "--task", "regression", "--seeds", "1", "--set", "gt.num_subsets=300", "--serial"]


@pytest.fixture
def build(capsys, caplog):
    """Runs the build into ``results``; returns the exit code and what it printed and logged."""
    def go(results: Path) -> tuple[int, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tdabench"):
            code = cli.main([*BUILD, "--results-dir", str(results)])
        return code, capsys.readouterr().err + caplog.text
    return go


def _to_do(err: str) -> int:
    return int(re.search(r"(\d+) of 300 retrains to do", err).group(1))


def _truth(results: Path) -> torch.Tensor:
    return load_ground_truth(Regression(RegressionConfig()), GroundTruthConfig(num_subsets=300), 0, results).replicas


def _check_stop(code: int, err: str, results: Path) -> int:
    assert code == 1 and "Traceback" not in err, err[-2000:]
    assert f"no space left on the device holding {results}" in err and "run the same command again to resume" in err
    assert not list(results.rglob(".*.tmp*")), "a partial temporary file was left behind"
    return len(list(results.rglob("pieces/*")))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 128 KiB tmpfs (root only; skipped where mounting is not allowed), unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_tmpfs_stops_the_build_and_the_same_command_resumes(tiny_disk, tmp_path, build):
    code, err = build(tiny_disk / "results")
    kept = _check_stop(code, err, tiny_disk / "results")
    assert kept >= 1                                           # pieces written before the disk filled
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)
    code, err = build(tiny_disk / "results")
    assert code == 0 and _to_do(err) == 300 - kept             # finished pieces are not retrained
    assert build(tmp_path / "plain")[0] == 0
    assert torch.equal(_truth(tiny_disk / "results"), _truth(tmp_path / "plain"))


def test_a_writer_failing_as_torch_does_on_a_full_disk(tmp_path, build, monkeypatch):
    real, calls = files.torch.save, []

    def save(obj, path):                                       # the 21st write comes up short, as on a full disk
        calls.append(path)
        if len(calls) == 21:
            Path(path).write_bytes(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, path)

    monkeypatch.setattr(files.torch, "save", save)
    monkeypatch.setattr(diskspace, "free_bytes", lambda root: 0)
    code, err = build(tmp_path / "results")
    assert _check_stop(code, err, tmp_path / "results") == 19   # masks, then 19 pieces, then the short write
    monkeypatch.setattr(files.torch, "save", real)
    monkeypatch.undo()
    code, err = build(tmp_path / "results")
    assert code == 0 and _to_do(err) == 281


def test_other_writer_failures_are_not_called_a_full_disk(tmp_path):
    assert not diskspace.out_of_space(RuntimeError("unexpected pos 704 vs 598 in inline_container.cc"), tmp_path)
    assert diskspace.out_of_space(OSError(28, "No space left on device"), tmp_path)
    assert not diskspace.out_of_space(OSError(13, "Permission denied"), tmp_path)
