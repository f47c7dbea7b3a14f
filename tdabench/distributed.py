"""Executors for retrain jobs: serial (in-process, for tests and debugging) and Ray (local
instance by default, or a cluster).  Nothing under methods/ or tasks/ imports Ray."""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Optional, Protocol

import torch
from torch import Tensor

from .config import config_dict, with_values
from .retrain import train_and_measure
from .registry import TASKS
from .task import Task

log = logging.getLogger("tdabench")

#: One retrain: (subset index k, retrain-seed index r, mask [n_train], training seed).
Job = tuple[int, int, Tensor, int]


class Executor(Protocol):
    def run(self, task: Task, jobs: list[Job]) -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(k, r, targets[n_query])`` for every job, in the order they finish."""
        ...


class SerialExecutor:
    """Runs every job in this process, one after the other, with ``threads`` torch threads."""

    def __init__(self, threads: Optional[int] = None) -> None:
        self.threads = threads

    def run(self, task: Task, jobs: list[Job]) -> Iterator[tuple[int, int, Tensor]]:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for k, r, mask, seed in jobs:
                yield k, r, train_and_measure(task, mask, seed)
        finally:
            torch.set_num_threads(before)


_WORKER_TASKS: dict[str, Task] = {}


def _worker_task(name: str, config: dict[str, Any]) -> Task:
    """Build (once per worker process) the task named ``name`` with ``config`` on the worker's device."""
    key = repr((name, sorted(config.items())))
    if key not in _WORKER_TASKS:
        cls = TASKS.get(name)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _WORKER_TASKS[key] = cls(with_values(cls.Config, config), device=device)
    return _WORKER_TASKS[key]


def _remote_retrain(name: str, config: dict[str, Any], mask: Tensor, seed: int) -> Tensor:
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # one CPU per retrain: Ray runs one retrain per core
    return train_and_measure(_worker_task(name, config), mask, seed)


class RayExecutor:
    """Runs each retrain as one Ray task (1 CPU, or ``task.num_gpus_per_retrain`` GPUs on CUDA).

    With no address a local Ray instance sized to this machine is started (and stopped by
    ``close``); ``address`` (or ``RAY_ADDRESS``) joins an existing cluster, whose workers must have
    tdabench installed.  Worker crashes are retried ``max_retries`` times; an exception raised by
    the training code itself is not retried — it is a bug, and it stops the build (retrains already
    written stay on disk).
    """

    def __init__(self, address: Optional[str] = None, max_retries: int = 3, num_cpus: Optional[int] = None) -> None:
        import ray

        self.ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True}
            if address is None:
                kwargs |= {"num_cpus": num_cpus or os.cpu_count(), "object_store_memory": 512 * 2**20}
            ray.init(address=address, **kwargs)
        self.max_retries = max_retries
        self._fn = ray.remote(_remote_retrain)

    def run(self, task: Task, jobs: list[Job]) -> Iterator[tuple[int, int, Tensor]]:
        use_gpu = task.device.type == "cuda"
        opts = {"num_cpus": 1, "num_gpus": task.num_gpus_per_retrain if use_gpu else 0,
                "max_retries": self.max_retries, "retry_exceptions": False}
        config = config_dict(task.config)
        pending = {self._fn.options(**opts).remote(task.name, config, mask.cpu(), seed): (k, r)
                   for k, r, mask, seed in jobs}
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                k, r = pending.pop(done[0])
                yield k, r, self.ray.get(done[0])
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
