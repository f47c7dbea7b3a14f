"""A real two-node Ray cluster on this machine (issue 17): a head node and a second node started with
``ray start`` on 127.0.0.1, each with one CPU; ``tdabench ground-truth --ray-address`` runs retrains on
both and builds the same ground truth as a serial one-thread build; the second node killed mid-build
loses nothing; a wrong address fails in seconds naming the flag.  The cluster's processes are found
by their ports and stopped by pid (``ray stop`` would also stop other Ray instances on the machine)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

from tdabench.engine.groundtruth import GroundTruthConfig, load_ground_truth  # noqa: E402
from tdabench.tasks.regression import Regression, RegressionConfig  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
TASK = ["--task", "regression", "--seeds", "1", "--set", "task.n_train=60", "--set", "task.n_query=10"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, command line)}`` of every process (from /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[int(pid)] = (int(rest.rsplit(")", 1)[1].split()[1]), cmd)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _kill_matching(text: str) -> int:
    """SIGKILL every process whose command line contains ``text``, and everything below them."""
    procs, mine, pid = _processes(), set(), os.getpid()
    while pid in procs and pid not in mine:          # this process and its ancestors hold the text in their argv too
        mine.add(pid)
        pid = procs[pid][0]
    doomed = {pid for pid, (_, cmd) in procs.items() if text in cmd and pid not in mine}
    grew = True
    while grew:
        below = {pid for pid, (parent, _) in procs.items() if parent in doomed} - doomed
        doomed |= below
        grew = bool(below)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(doomed)


@pytest.fixture
def cluster(monkeypatch):
    """Head node (port P) and a second node (node manager port N), one CPU each, with token
    authentication (Ray's default for a head node) and a private temporary folder, by which their
    processes are found and stopped."""
    if not Path(RAY).exists() or not Path("/proc").exists():
        pytest.skip("needs the ray command line and /proc")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")          # for both nodes and for the tdabench driver
    if not (Path.home() / ".ray" / "auth_token").exists() and not os.environ.get("RAY_AUTH_TOKEN"):
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)
    temp = tempfile.mkdtemp(prefix="tdr-", dir="/tmp")   # short: Ray's socket paths must stay under 108 bytes
    port, second = _port(), _port()
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", f"--node-manager-port={second}", *common],
                       check=True, capture_output=True, timeout=180)
        yield {"address": f"127.0.0.1:{port}", "second": second}
    finally:
        _kill_matching(temp)                              # gcs_server, raylets, agents, and the workers below them
        shutil.rmtree(temp, ignore_errors=True)


def _tdabench(args: list[str], results: Path, on_line=None) -> tuple[int, str]:
    """Run the CLI in a subprocess; ``on_line(line)`` sees each log line as it comes."""
    proc = subprocess.Popen([sys.executable, "-m", "tdabench.cli", *args, "--results-dir", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if on_line:
                on_line(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=600)
    reader.join(10)
    return code, "".join(lines)


def _truth(results: Path, subsets: int) -> torch.Tensor:
    task = Regression(RegressionConfig(n_train=60, n_query=10))
    return load_ground_truth(task, GroundTruthConfig(num_subsets=subsets), 0, results).replicas


def test_two_nodes_build_the_serial_ground_truth_and_survive_losing_one(cluster, tmp_path, monkeypatch):
    with monkeypatch.context() as env:                  # a driver without the cluster's authentication mode
        env.delenv("RAY_AUTH_MODE")
        code, log = _tdabench(["ground-truth", *TASK, "--ray-address", cluster["address"]], tmp_path / "no-auth")
    assert code == 2 and "could not join the Ray cluster" in log and "RAY_AUTH_MODE=token" in log, log[-3000:]
    assert "Traceback" not in log
    code, log = _tdabench(["ground-truth", *TASK, "--set", "gt.num_subsets=40", "--ray-address", cluster["address"]],
                          tmp_path / "cluster")
    assert code == 0, log[-3000:]
    assert "joining the Ray cluster at 127.0.0.1" in log and "Ray ran 40 retrains on 2 node(s)" in log, log[-3000:]
    code, log = _tdabench(["ground-truth", *TASK, "--set", "gt.num_subsets=40", "--serial", "--threads", "1"],
                          tmp_path / "serial")
    assert code == 0, log[-3000:]
    assert torch.equal(_truth(tmp_path / "cluster", 40), _truth(tmp_path / "serial", 40))

    killed: list[int] = []

    def kill_second_node(line: str) -> None:       # once retrains are running on both nodes
        if not killed and "retrain regression seed 0:" in line:
            killed.append(_kill_matching(f"--node_manager_port={cluster['second']}"))
    code, log = _tdabench(["ground-truth", *TASK, "--set", "gt.num_subsets=200", "--ray-address", cluster["address"]],
                          tmp_path / "cluster", kill_second_node)
    assert killed and killed[0] >= 1, log[-3000:]
    assert code == 0, log[-3000:]
    code, _ = _tdabench(["ground-truth", *TASK, "--set", "gt.num_subsets=200", "--serial", "--threads", "1"],
                        tmp_path / "serial")
    assert code == 0 and torch.equal(_truth(tmp_path / "cluster", 200), _truth(tmp_path / "serial", 200))


def test_a_wrong_address_fails_in_seconds_naming_the_flag(tmp_path):
    began = time.perf_counter()
    code, log = _tdabench(["ground-truth", *TASK, "--ray-address", f"127.0.0.1:{_port()}"], tmp_path)
    assert code == 2 and "--ray-address 127.0.0.1:" in log and "no Ray cluster answers there" in log, log
    assert time.perf_counter() - began < 10 and "Traceback" not in log
