"""Ray drills on this machine (issue 17): Ctrl-C during a real Ray build leaves no process of the run
behind and prints one line, and a Ray task carries only its own subset mask."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from tdabench.engine.distributed import payload

pytest.importorskip("ray")


def descendants(root: int) -> list[int]:
    """Every process below ``root`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            children.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process tree from /proc")
def test_ctrl_c_during_a_parallel_build_stops_every_process_of_the_run(tmp_path):
    """SIGINT to the foreground process group, as a terminal's Ctrl-C sends it, once the default build's
    worker processes retrain (a local Ray instance before them: its servers and agents survived it)."""
    cmd = [sys.executable, "-m", "tdabench.cli", "ground-truth", "--task", "regression", "--seeds", "1",
           "--set", "gt.num_subsets=600", "--results-dir", str(tmp_path)]
    # A terminal's process: SIGINT at its default (a shell starts background jobs, CI's included, with it
    # ignored, and Python then never installs its KeyboardInterrupt handler).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.time() + 120
    started = "600 of 600 retrains to do"                    # the build has begun; then wait for its workers
    while not (any(started in line for line in lines) and len(descendants(proc.pid)) >= 2) \
            and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert any(started in line for line in lines), "".join(lines)
    tree = descendants(proc.pid)
    assert len(tree) >= 2, tree                              # a worker per core
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)                  # leave nothing running, show what it printed
        pytest.fail("still running 60 s after Ctrl-C:\n" + "".join(lines[-20:]))
    assert code == 130
    reader.join(5)
    err = "".join(lines)
    assert "Traceback" not in err and "bug in Ray" not in err, err[-2000:]
    assert err.count("interrupted") == 1 and "run the same command again to resume" in err
    time.sleep(5)                                            # Ray's own shutdown is asynchronous
    survivors = [pid for pid in tree if _alive(pid)]
    for pid in survivors:                                    # leave nothing behind even when failing
        os.kill(pid, signal.SIGKILL)
    assert not survivors, survivors


def test_a_ray_task_carries_its_own_mask_not_the_whole_mask_matrix():
    masks = torch.rand(5000, 200) < 0.5                               # shape: [K, n_train]
    jobs = [(k, 0, masks[k], k) for k in range(3)]
    shipped = pickle.dumps(payload(jobs))
    assert len(shipped) < 10_000 < len(pickle.dumps(jobs))           # 3 rows of 200, not 3 × 1 MB
    assert all(torch.equal(torch.as_tensor(a[2]), b[2]) for a, b in zip(payload(jobs), jobs))
    assert not any(isinstance(job[2], torch.Tensor) for job in payload(jobs))   # a tensor would travel by fd


def test_serial_retrains_use_the_threads_of_a_ray_worker(monkeypatch):
    """One model at a time on the CPU: one thread, as on Ray; many at once: the executor's threads."""
    from tdabench.engine import distributed
    from tdabench.engine.distributed import SerialExecutor
    from tdabench.tasks.digits import Digits, DigitsConfig
    from tdabench.tasks.regression import Regression, RegressionConfig

    seen: list[int] = []
    monkeypatch.setattr(distributed, "_train_chunk",
                        lambda task, group, *a: seen.append(torch.get_num_threads()) or torch.zeros(len(group), 1))
    mask = torch.ones(20, dtype=torch.bool)
    before = torch.get_num_threads()
    list(SerialExecutor(threads=2).run(Regression(RegressionConfig(n_train=20, n_query=4)), [(0, 0, mask, 0)] * 3))
    list(SerialExecutor(threads=2).run(Digits(DigitsConfig(n_train=20, n_query=4)), [(0, 0, mask, 0)] * 3))
    assert seen == [1, 1, 1, 2] and torch.get_num_threads() == before   # 3 single retrains, 1 chunk of 3


def test_a_local_build_never_joins_a_cluster_left_by_ray_start(monkeypatch):
    """`ray start` records its cluster in Ray's temp folder and a bare ``ray.init()`` joins it; a build
    without --ray-address starts its own instance even when that record points at a dead cluster."""
    import ray
    from ray._common.utils import get_ray_address_file

    from tdabench.engine.distributed import RayExecutor

    own = tempfile.mkdtemp(prefix="tdr-", dir="/tmp")          # short: Ray's socket paths stay under 108 bytes
    monkeypatch.setenv("RAY_TMPDIR", own)                      # Ray's temp folder: this test's own
    record = Path(get_ray_address_file(None))
    assert str(record).startswith(own), record
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("127.0.0.1:1")                           # a cluster that `ray start` left behind, now dead
    executor = RayExecutor(num_cpus=1)
    try:
        assert ray.cluster_resources().get("CPU") == 1
    finally:
        executor.close()
        shutil.rmtree(own, ignore_errors=True)
