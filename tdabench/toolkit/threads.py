"""Torch CPU threads chosen by a model's size and by the cores that are idle (issue 38).

torch starts one intra-op thread per core.  A small model's operators are too short to share: two
threads only wait for each other, and on a busy machine they wait for the other processes too.  The
digits MLP trained in 0.08 s on one thread and on two when the machine was quiet, and in 0.14 s on one
against 0.41–0.59 s on two with one spinning process per core.  A larger model (tinylm, 166 k
parameters) gains from two threads on a quiet machine (1.38 → 0.85 s) and loses on a busy one
(1.9 → 3.1–5.3 s): an operator large enough to share is shared only among cores nobody else uses.

So, on the CPU, unless the threads are pinned (``--threads N``, or a record being reproduced):

- training a model under ``PARALLEL_FROM`` parameters runs on one thread (``benchmarks/threads.py``
  measures where two threads start to pay on a quiet machine);
- anything else — training a larger model, a method's fit and score, whose operators span the
  attribution set or a curvature of d × d — runs on as many threads as there are idle cores (sampled
  for ``SAMPLE_S`` from ``/proc/stat``, the load average elsewhere), at least one and at most torch's
  own count.  ``if``'s fit and score on digits (a 2,410² Hessian) took 2.4 s on two threads and 4.1 s on
  one, quiet; on a busy machine the idle cores are none and it runs on one.

Parallelism across models comes from processes (the ground truth's forked workers run one thread
each).  The thread count changes float32 sums at rounding level, so each record names the threads it
ran on and the reason (``environment.torch_threads``, ``environment.thread_policy``), and reproducing
a record pins its count.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

#: Parameters from which training a model gains from more than one thread on a quiet machine
#: (``benchmarks/threads.py``: MLPs of growing width, one thread against two, warm and alternating;
#: its table in ``results/benchmarks/threads.md``: about 1.1× at 38 k parameters, 1.2× at 85 k).
PARALLEL_FROM = 100_000
#: How long the idle cores are sampled for (seconds).
SAMPLE_S = 0.1

_pinned: Optional[int] = None


@dataclass(frozen=True)
class Choice:
    threads: int
    why: str


def pin(threads: Optional[int]) -> None:
    """Fix the thread count for every stage (``--threads N``); ``None`` hands the choice back to the policy."""
    global _pinned
    _pinned = threads


def pinned() -> Optional[int]:
    return _pinned


@contextlib.contextmanager
def pinned_to(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch threads and the policy off (reproducing a record as it was made)."""
    before, was = torch.get_num_threads(), _pinned
    torch.set_num_threads(threads)
    pin(threads)
    try:
        yield
    finally:
        pin(was)
        torch.set_num_threads(before)


def _cpu_times() -> Optional[tuple[float, float]]:
    """(idle, total) jiffies over all cores since boot, from ``/proc/stat``; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def idle_cores(sample_s: float = SAMPLE_S) -> float:
    """How many cores nobody is using now: /proc/stat's idle share over ``sample_s`` seconds × the
    machine's cores (the 1-minute load average where /proc/stat is missing)."""
    cores = os.cpu_count() or 1
    first = _cpu_times()
    if first is None:
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except OSError:
            return float(cores)
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return float(cores)
    return cores * (second[0] - first[0]) / (second[1] - first[1])


def choose(n_params: Optional[int] = None, idle: Optional[Callable[[], float]] = None) -> Choice:
    """The threads for training a model of ``n_params`` parameters, or (``None``) for a method's stages
    (see the module's text)."""
    if _pinned is not None:
        return Choice(_pinned, "pinned (--threads or a reproduced record)")
    ceiling = min(torch.get_num_threads(), _cores())
    if n_params is not None and n_params < PARALLEL_FROM:
        return Choice(1, f"training {n_params:,} parameters (< {PARALLEL_FROM:,}): one thread")
    if ceiling == 1:
        return Choice(1, "one thread is all torch has")
    free = (idle or idle_cores)()
    threads = max(1, min(ceiling, int(free + 0.5)))
    return Choice(threads, f"{free:.1f} idle cores: {threads} of {ceiling}")


@contextlib.contextmanager
def chosen(n_params: Optional[Callable[[], int]] = None, device: torch.device | str = "cpu") -> Iterator[Optional[Choice]]:
    """Torch threads set by ``choose`` for the block (restored after); nothing changes off the CPU.
    ``n_params`` (training a model of that size; None: a method's stages) is called only when needed."""
    if torch.device(device).type != "cpu":
        yield None
        return
    choice = choose(None if n_params is None or _pinned is not None else n_params())
    before = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)
