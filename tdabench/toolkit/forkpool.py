"""Independent pieces of one computation on forked worker processes (CPU).

A forked worker starts with a copy of this process's memory — the model, the data, the closures —
so nothing is pickled on the way in but an item's index; only the results travel back (pass numpy
arrays: a tensor would be sent through a shared-memory file descriptor).  Results come back in item
order, so whatever consumes them in that order gets the same answer for any number of workers.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch

T = TypeVar("T")

#: The job the forked workers run: (function of an item index, torch threads per worker).
_JOB: Optional[tuple[Callable[[int], Any], int]] = None


_PR_SET_PDEATHSIG = 1   # linux/prctl.h: the signal this process gets when its parent dies


def ignore_interrupts() -> None:
    """A worker's set-up: it leaves Ctrl-C to the parent, which stops it (no traceback from every
    worker), and on Linux it is killed when the parent dies: a forked worker holds the writing end of
    its own job queue, so after a ``kill -9`` of the run it would otherwise wait for work forever.
    SIGTERM, which ends the workers when the pool stops, gets its default action back: a process
    running Ray has Ray's handler there, and every forked worker printed its stack dump on the way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # blocked by ``forking``: a pending one is dropped
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:   # the parent died before the request took hold
            os._exit(1)


@contextlib.contextmanager
def forking() -> Iterator[None]:
    """Ctrl-C held back while worker processes are forked: a SIGINT between a fork and the worker's
    ``ignore_interrupts`` interrupted the child's own start-up (Python reseeds ``random`` at fork) and printed
    its traceback.  Held, it reaches this process once the workers exist (they start with it blocked, then
    ignore it)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _call(item: int) -> Any:
    fn, threads = _JOB  # type: ignore[misc]
    torch.set_num_threads(threads)
    return fn(item)


def fork_map(fn: Callable[[int], T], count: int, workers: int) -> list[T]:
    """``[fn(0), …, fn(count − 1)]`` computed on ``min(workers, count)`` forked processes, each with
    this process's torch threads shared out among them (at least one); in this process when that is
    one worker.  An exception in a worker is raised here."""
    global _JOB
    workers = min(workers, count)
    if workers <= 1:
        return [fn(i) for i in range(count)]
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("parallel workers fork this process, which this platform cannot do: use 1 worker")
    _JOB = (fn, max(1, torch.get_num_threads() // workers))
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=ignore_interrupts)
    try:
        results = pool.map(_call, range(count), chunksize=1)
        # Done: let every worker take its end-of-work sentinel and exit.  ``terminate`` (what the pool's
        # ``with`` block calls) raced the pool's worker-handler thread on a busy machine: a worker it had
        # just forked sat on the job queue's lock, which ``terminate`` holds, unsignalled, and the join
        # waited for it forever (seen once in a CI run beside a ground-truth build).
        pool.close()
        pool.join()
        return results
    finally:
        pool.terminate()          # an error or Ctrl-C: stop the workers (after a join, nothing is left to stop)
        _JOB = None
