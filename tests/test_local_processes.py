"""The default executor on one machine: forked worker processes, one per core.  They give the serial
ground truth, replace a worker that dies and rerun its jobs, and open no network port."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tdabench.engine import distributed
from tdabench.engine.distributed import ProcessExecutor, SerialExecutor
from tdabench.engine.groundtruth import GroundTruthConfig, build_ground_truth
from tdabench.tasks.regression import Regression, RegressionConfig


def _both(task, cfg, root, executor):
    return (build_ground_truth(task, cfg, 0, root / "serial", SerialExecutor()),
            build_ground_truth(task, cfg, 0, root / "processes", executor))


def test_local_processes_give_the_serial_ground_truth(tmp_path):
    from tdabench.tasks.digits import Digits, DigitsConfig

    serial, local = _both(Regression(RegressionConfig(n_train=30, n_query=5, dim=3)), GroundTruthConfig(num_subsets=6),
                          tmp_path / "regression", ProcessExecutor(workers=2))
    assert torch.equal(serial.masks, local.masks)
    torch.testing.assert_close(serial.replicas, local.replicas, atol=1e-9, rtol=1e-9)
    serial, local = _both(Digits(DigitsConfig(n_train=100, n_query=8, epochs=2)),
                          GroundTruthConfig(num_subsets=6, chunk_size=2), tmp_path / "digits", ProcessExecutor(workers=2))
    torch.testing.assert_close(serial.replicas, local.replicas)          # chunks of models trained at once


def test_a_worker_that_dies_is_replaced_and_its_jobs_rerun(tmp_path, monkeypatch, caplog):
    """The worker training subset 2 dies the first time (as under the out-of-memory killer): a new pool
    reruns what was unfinished, and the ground truth is the serial one."""
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    cfg = GroundTruthConfig(num_subsets=6)
    marker, train = tmp_path / "died-once", distributed._train_chunk

    def dies_once(task, group, *args):
        if any(k == 2 for k, *_ in group) and not marker.exists():
            marker.touch()
            os._exit(9)
        return train(task, group, *args)
    serial = build_ground_truth(task, cfg, 0, tmp_path / "serial", SerialExecutor())
    monkeypatch.setattr(distributed, "_train_chunk", dies_once)                # in the workers only
    local = build_ground_truth(task, cfg, 0, tmp_path / "processes", ProcessExecutor(workers=2))
    assert marker.exists() and "a worker process died" in caplog.text
    torch.testing.assert_close(serial.replicas, local.replicas, atol=1e-9, rtol=1e-9)


def test_a_job_that_kills_every_worker_stops_the_build_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "_train_chunk", lambda task, group, *a: os._exit(9))
    task = Regression(RegressionConfig(n_train=30, n_query=5, dim=3))
    with pytest.raises(RuntimeError, match="worker processes died 2 times"):
        build_ground_truth(task, GroundTruthConfig(num_subsets=4), 0, tmp_path, ProcessExecutor(workers=2, max_retries=1))


def _listening_inodes() -> set[str]:
    """Socket inodes in the LISTEN state (TCP over IPv4 and IPv6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":                                           # TCP_LISTEN
                out.add(fields[9])
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc")
def test_a_default_build_listens_on_no_port(tmp_path):
    """While a default ground-truth build retrains (one model at a time, so in worker processes), no
    process of it holds a listening socket: nothing on this machine or its network can connect."""
    from test_ray_drills import _alive, descendants

    cmd = [sys.executable, "-m", "tdabench.cli", "ground-truth", "--task", "regression", "--seeds", "1",
           "--set", "gt.num_subsets=3000", "--results-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        deadline = time.time() + 120                                        # until the workers retrain
        while len(descendants(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        tree = [proc.pid, *descendants(proc.pid)]
        assert len(tree) >= 3, (tree, lines[-5:])                           # the run and its workers
        held = set().union(*(_socket_inodes(pid) for pid in tree))
        assert not held & _listening_inodes(), "a process of the build listens on a port"
    finally:
        proc.kill()
        proc.wait(30)
    # kill -9 of the run takes its workers with it (they would wait on their job queue forever)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in tree) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in tree if _alive(pid)], "worker processes outlived a killed run"
