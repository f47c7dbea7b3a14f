"""Torch CPU threads chosen by size (``tdabench/toolkit/threads.py``, issue 38), measured.

1. Where two threads start to pay: an MLP trained for ``STEPS`` minibatch steps at growing widths, one
   thread against two, on a quiet machine (the policy's ``PARALLEL_FROM``).
2. The policy against ``--threads 1`` and against torch's own count, for the reference training of
   ``digits`` and ``tinylm`` and for ``if``'s fit and score on ``digits``: quiet, then with one busy
   process per core (``python -c 'while True: pass'``).  Each figure is the median of ``--reps`` runs,
   warm, the settings alternating in one process.  The policy's time includes its choice (the idle
   cores are sampled for 0.1 s on a large model).

    python benchmarks/threads.py [--reps 5] [--readme]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from tdabench.api.registry import TASKS
from tdabench.api.seeds import reference_seed
from tdabench.engine import pipeline
from tdabench.engine.spec import RunSpec
from tdabench.toolkit import threads

WIDTHS = (16, 48, 96, 160, 256, 400)   # hidden width of a 64 → w → w → 10 MLP
STEPS, BATCH = 120, 32
OWN = torch.get_num_threads()          # torch's own count: one per core


@contextmanager
def busy(on: bool) -> Iterator[None]:
    """One spinning process per core while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)] if on else []
    try:
        time.sleep(0.5 if on else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def timed(fn: Callable[[], object], setting: str) -> float:
    """Seconds of ``fn`` (which applies the policy itself, as the pipeline does) under a setting:
    ``policy``, or ``1`` or ``own`` threads pinned (``--threads N``)."""
    t = time.perf_counter()
    if setting == "policy":
        fn()
    else:
        with threads.pinned_to(1 if setting == "1" else OWN):
            fn()
    return time.perf_counter() - t


def compare(fn: Callable[[], object], reps: int, settings: tuple[str, ...]) -> dict[str, float]:
    fn()                                                       # warm
    times: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(reps):
        for s in settings[r % len(settings):] + settings[: r % len(settings)]:   # alternate the order
            times[s].append(timed(fn, s))
    return {s: statistics.median(t) for s, t in times.items()}


def mlp_training(width: int) -> tuple[Callable[[], object], int]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(STEPS * BATCH, 64, generator=gen), torch.randint(0, 10, (STEPS * BATCH,), generator=gen)

    def run() -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for i in range(STEPS):                                  # shape: x[b] [BATCH, 64]
            b = slice(i * BATCH, (i + 1) * BATCH)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()

    return run, 64 * width + width * width + 10 * width + 2 * width + 10


def reference_training(name: str) -> tuple[Callable[[], object], int]:
    task = TASKS.get(name)()
    every = torch.arange(task.train_data()[0].shape[0])

    size = sum(p.numel() for p in task.make_model(0).parameters())

    def run() -> None:
        with threads.chosen(lambda: size):                 # as make_context trains the reference model
            task.train(task.make_model(reference_seed(0)), every, reference_seed(0))

    return run, size


def if_fit_and_score() -> tuple[Callable[[], object], int]:
    spec = RunSpec(task="digits", methods=("if",), seeds=(0,), results_dir=Path("results"), executor="serial")
    plan = pipeline.prepare(spec)
    ctx = pipeline.make_context(spec, plan.task, plan.methods[0], 0)

    def run() -> None:                                     # fit_and_score chooses its threads itself
        with tempfile.TemporaryDirectory() as cache:      # nothing cached between runs: the whole fit each time
            pipeline.fit_and_score(plan.methods[0], dataclasses.replace(ctx, cache_dir=Path(cache)))

    return run, sum(p.numel() for p in ctx.model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--readme", action="store_true", help="write results/benchmarks/threads.md and its blocks")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    lines = [f"machine: {os.cpu_count()} cores, torch's own count {OWN}, load average {load:.2f} at the start", "",
             f"MLP training ({STEPS} steps of {BATCH}), quiet: seconds on 1 and {OWN} threads", "",
             "| parameters | 1 thread | own | 1 / own |", "|---|---|---|---|"]
    for width in WIDTHS:
        fn, size = mlp_training(width)
        t = compare(fn, args.reps, ("1", "own"))
        lines.append(f"| {size:,} | {t['1']:.3f} | {t['own']:.3f} | {t['1'] / t['own']:.2f} |")
        print(lines[-1], flush=True)
    work = {"digits reference training": reference_training("digits"),
            "tinylm reference training": reference_training("tinylm"), "digits `if` fit + score": if_fit_and_score()}
    table = [f"Seconds (median of {args.reps}, warm, alternating; `benchmarks/threads.py`; {os.cpu_count()} cores): "
             f"the default (threads by size, `toolkit/threads.py`) against `--threads 1` and torch's own {OWN} threads, "
             f"quiet and with one busy process per core", "",
             "| stage | parameters | machine | default | `--threads 1` | own | default / 1 thread |", "|---|---|---|---|---|---|---|"]
    for condition in ("quiet", "busy"):
        with busy(condition == "busy"):
            for label, (fn, size) in work.items():
                t = compare(fn, args.reps, ("policy", "1", "own"))
                table.append(f"| {label} | {size:,} | {condition} | {t['policy']:.2f} | {t['1']:.2f} | {t['own']:.2f} | "
                             f"{t['policy'] / t['1']:.2f} |")
                print(table[-1], flush=True)
    print("\n".join(table))
    if args.readme:
        from _readme import publish

        publish("threads", "\n".join(table), "\n".join(lines))


if __name__ == "__main__":
    main()
