"""Forked workers: results in item order, errors raised in the parent, Ctrl-C stops every worker
with no traceback from them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tdabench.toolkit.forkpool import fork_map


def test_results_come_back_in_item_order_from_other_processes():
    got = fork_map(lambda i: (i * i, os.getpid()), 5, 2)
    assert [v for v, _ in got] == [0, 1, 4, 9, 16]
    assert os.getpid() not in {pid for _, pid in got}
    assert [v for v, _ in fork_map(lambda i: (i, os.getpid()), 3, 1)] == [0, 1, 2]   # one worker: here


def test_an_error_in_a_worker_is_raised_here():
    def fail(i: int) -> int:
        if i == 2:
            raise ValueError("item 2 failed")
        return i
    with pytest.raises(ValueError, match="item 2 failed"):
        fork_map(fail, 4, 2)


def test_ctrl_c_stops_the_workers_without_their_tracebacks(tmp_path):
    script = tmp_path / "spin.py"
    script.write_text(textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a background shell ignores it
        from tdabench.toolkit.forkpool import fork_map
        def spin(i):
            end = time.time() + 60
            while time.time() < end:
                pass
        print("started", flush=True)
        try:
            fork_map(spin, 2, 2)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(2)                                  # the workers are spinning
    os.killpg(proc.pid, signal.SIGINT)             # as a terminal does: the whole process group
    out, err = proc.communicate(timeout=30)
    assert "stopped" in out and "Traceback" not in err, err
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout == b""   # no worker left


def test_a_worker_ends_on_sigterm_without_the_parents_handler():
    # a process running Ray has Ray's SIGTERM handler, which printed a stack dump from every forked
    # worker that the pool ended; a worker takes SIGTERM's default action instead
    previous = signal.signal(signal.SIGTERM, lambda *_: print("the parent's handler"))
    try:
        handlers = fork_map(lambda i: signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, 2, 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handlers == [True, True]
