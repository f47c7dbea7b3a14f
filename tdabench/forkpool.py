"""Independent pieces of one computation on forked worker processes (CPU).

A forked worker starts with a copy of this process's memory — the model, the data, the closures —
so nothing is pickled on the way in but an item's index; only the results travel back (pass numpy
arrays: a tensor would be sent through a shared-memory file descriptor).  Results come back in item
order, so whatever consumes them in that order gets the same answer for any number of workers.
"""
from __future__ import annotations

import multiprocessing
import signal
from typing import Any, Callable, Optional, TypeVar

import torch

T = TypeVar("T")

#: The job the forked workers run: (function of an item index, torch threads per worker).
_JOB: Optional[tuple[Callable[[int], Any], int]] = None


def ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops them: no traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=ignore_interrupts) as pool:
            return pool.map(_call, range(count), chunksize=1)
    finally:
        _JOB = None
