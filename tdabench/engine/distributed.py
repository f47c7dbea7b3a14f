"""Executors for retrain jobs: serial (in-process, for tests and debugging), local processes (the
default on one machine: they open no network port) and Ray (a cluster, ``--ray-address``).  Nothing
under methods/ or tasks/ imports Ray.

This file is longer than 300 lines: the three executors (serial, local processes, Ray) share the
chunking, payload and worker-task helpers above them, and Ray's start and address checks go with Ray's.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Optional, Protocol

import torch
from torch import Tensor

from tdabench.api.config import ConfigError, config_dict, with_values
from tdabench.toolkit.brittleness import measuring_margins
from tdabench.toolkit.chunks import auto_chunk
from tdabench.toolkit.forkpool import forking, ignore_interrupts
from tdabench.toolkit.numerics import Numerics, current_numerics
from tdabench.toolkit.retrain import train_and_measure_many
from tdabench.toolkit.trajectory import measure_many_along
from tdabench.api.registry import TASKS
from tdabench.api.task import Task

log = logging.getLogger("tdabench")

#: One retrain: (subset index k, retrain-seed index r, mask [n_train], training seed).
Job = tuple[int, int, Tensor, int]


class Executor(Protocol):
    def run(self, task: Task, jobs: list[Job], chunk: int = 0, order: str = "independent",
            checkpoints: int = 0, measure: str = "measurement") -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(k, r, targets[n_query])`` for every job, in the order they finish; ``chunk`` jobs
        (0: ``auto_chunk``) are trained together (``Task.train_many``), their results yielded at once.
        ``order`` ``reference``: the jobs reweight the one run of their shared seed (``gt.order``);
        ``checkpoints`` > 0: each job's targets are ``[checkpoints, n_query]``, measured along its run;
        ``measure`` ``margin``: the targets are the queries' classification margins (``gt.kind=brittleness``)."""
        ...


def chunks(jobs: list[Job], size: int) -> list[list[Job]]:
    """``jobs`` in consecutive groups of at most ``size``."""
    return [jobs[i : i + size] for i in range(0, len(jobs), max(1, size))]


def payload(group: list[Job]) -> list[Job]:
    """A chunk's jobs as sent to a worker: each mask copied out of the ``[K, n_train]`` mask matrix it
    is a row of (pickling a row view would ship the whole matrix with every task: 1 MB per task at
    K=5,000, n=200, which filled Ray's object store and spilled 4 GB to disk), as a numpy array: a
    tensor sent to a forked worker travels through a file descriptor served by a thread of this
    process, which prints a traceback when Ctrl-C stops the worker halfway through receiving it."""
    return [(k, r, mask.cpu().numpy().copy(), seed) for k, r, mask, seed in group]


def _train_chunk(task: Task, group: list[Job], order: str = "independent", checkpoints: int = 0,
                 measure: str = "measurement") -> Tensor:
    if measure == "margin":
        with measuring_margins(task):
            return _train_chunk(task, group, order, checkpoints)
    masks = torch.stack([torch.as_tensor(mask).cpu() for _, _, mask, _ in group])               # shape: [M, n_train]
    seeds = [seed for _, _, _, seed in group]
    if checkpoints:
        return measure_many_along(task, masks, seeds, checkpoints, order)     # shape: [M, C, n_query]
    return train_and_measure_many(task, masks, seeds, order)                   # shape: [M, n_query]


class SerialExecutor:
    """Runs every job in this process, one after the other.  Models trained many at once (chunks) use
    ``threads`` torch threads (their measurements do not depend on it); a model trained alone on the
    CPU uses one thread, as a Ray worker does, so that a build resumed in the other mode never mixes
    two summation orders under one key (float32 retrains differed by up to 1.6e-4 between 2 threads
    and 1)."""

    def __init__(self, threads: Optional[int] = None) -> None:
        self.threads = threads

    workers = 1

    def run(self, task: Task, jobs: list[Job], chunk: int = 0, order: str = "independent",
            checkpoints: int = 0, measure: str = "measurement") -> Iterator[tuple[int, int, Tensor]]:
        chunk = auto_chunk(task, len(jobs), self.workers, chunk, order, checkpoints)
        before = torch.get_num_threads()
        threads = 1 if chunk == 1 and task.device.type == "cpu" else self.threads
        if threads:
            torch.set_num_threads(threads)
        try:
            for group in chunks(jobs, chunk):
                for (k, r, _, _), targets in zip(group, _train_chunk(task, group, order, checkpoints, measure)):
                    yield k, r, targets
        finally:
            torch.set_num_threads(before)


_WORKER_TASKS: dict[str, Task] = {}


def _worker_task(name: str, config: dict[str, Any], numerics: Numerics) -> Task:
    """Build (once per worker process) the task named ``name`` with ``config`` on the run's device type
    (on CUDA, the GPU that Ray assigned to this worker), never on whatever the worker happens to see."""
    key = repr((name, sorted(config.items()), numerics))
    if key not in _WORKER_TASKS:
        if numerics.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the run is on CUDA but this Ray worker sees no GPU; start the cluster's nodes "
                               "with their GPUs (ray start --num-gpus N) or run with --device cpu")
        cls = TASKS.get(name)
        _WORKER_TASKS[key] = cls(with_values(cls.Config, config), device=numerics.device)
    return _WORKER_TASKS[key]


def _remote_retrain(name: str, config: dict[str, Any], group: list[Job], numerics: Numerics = Numerics(),
                    order: str = "independent", checkpoints: int = 0, measure: str = "measurement") -> Tensor:
    numerics.apply()
    import ray

    if numerics.device == "cpu":
        torch.set_num_threads(1)  # one CPU per Ray task: Ray runs one task per core
    return (_train_chunk(_worker_task(name, config, numerics), group, order, checkpoints, measure),
            ray.get_runtime_context().get_node_id())


def _local_retrain(name: str, config: dict[str, Any], group: list[Job], numerics: Numerics,
                   order: str = "independent", checkpoints: int = 0, measure: str = "measurement") -> Any:
    """A chunk's measurements as a numpy array: a tensor would travel back through a file descriptor
    passed over a socket of the worker's, which a worker stopped by Ctrl-C leaves half-sent."""
    numerics.apply()
    if numerics.device == "cpu":
        torch.set_num_threads(1)  # one process per core, one thread each, as a Ray worker
    return _train_chunk(_worker_task(name, config, numerics), group, order, checkpoints, measure).cpu().numpy()


class ProcessExecutor:
    """Runs each retrain (or chunk of retrains) in a pool of forked local processes, one per CPU core
    with one torch thread each — what a local Ray instance did, without its servers, which listen on
    every network interface.  A worker that dies (killed, out of memory) breaks the pool: a new pool
    takes the unfinished jobs, up to ``max_retries`` times; an exception raised by the training code
    itself is not retried — it is a bug, and it stops the build (retrains already written stay)."""

    def __init__(self, workers: Optional[int] = None, max_retries: int = 3) -> None:
        self.workers, self.max_retries = workers or os.cpu_count() or 1, max_retries

    def run(self, task: Task, jobs: list[Job], chunk: int = 0, order: str = "independent",
            checkpoints: int = 0, measure: str = "measurement") -> Iterator[tuple[int, int, Tensor]]:
        chunk = auto_chunk(task, len(jobs), self.workers, chunk, order, checkpoints)
        config, numerics = config_dict(task.config), current_numerics(task)
        todo = chunks(jobs, chunk)
        for attempt in range(self.max_retries + 1):
            pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"), ignore_interrupts)
            try:
                with forking():      # a fork-context pool starts every worker at the first submit
                    pending = {pool.submit(_local_retrain, task.name, config, payload(group), numerics, order,
                                           checkpoints, measure): i for i, group in enumerate(todo)}
                finished = yield from self._collect(pending, todo)
            finally:
                self._stop(pool)
            todo = [group for i, group in enumerate(todo) if i not in finished]
            if not todo:
                return
            log.warning("a worker process died; retrying its %d unfinished job(s) in new processes "
                        "(attempt %d of %d)", sum(map(len, todo)), attempt + 1, self.max_retries)
        raise RuntimeError(f"worker processes died {self.max_retries + 1} times running these retrains; "
                           "look for the out-of-memory killer in the system log, or run with --serial")

    @staticmethod
    def _collect(pending: dict[Future, int], todo: list[list[Job]]) -> Iterator[tuple[int, int, Tensor]]:
        """Yield the results of ``pending`` as they finish; return the indices of the finished groups
        (all of them, unless a worker died)."""
        finished: set[int] = set()
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    measured = future.result()
                except BrokenProcessPool:
                    return finished
                finished.add(i)
                for (k, r, _, _), targets in zip(todo[i], torch.from_numpy(measured)):
                    yield k, r, targets
        return finished

    @staticmethod
    def _stop(pool: ProcessPoolExecutor) -> None:
        """Cancel what has not started and end the workers now (a running retrain is not waited for)."""
        processes = list(getattr(pool, "_processes", {}).values())   # CPython keeps its workers here
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(5)
        pool.shutdown(wait=True)   # its manager thread sees the workers gone and ends

    def close(self) -> None:
        pass


def check_address(address: Optional[str], timeout: float = 3.0) -> None:
    """Fail at once, naming the flag, when ``address`` (``--ray-address`` or ``RAY_ADDRESS``) is not
    ``HOST:PORT`` (or ``ray://HOST:PORT``, or ``auto``) or nothing listens there: ``ray.init`` would retry
    a dead address for minutes before failing with a traceback."""
    if not address or address == "auto":
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    fix = ("start a head node there (`ray start --head --port PORT`), or leave --ray-address out "
           "(and unset RAY_ADDRESS) for a local instance")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379); {fix}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({err.strerror or err}); {fix}") from None


def start_ray(ray: Any, address: Optional[str], **kwargs: Any) -> None:
    """``ray.init(address, **kwargs)``, logged before (a local start is ~30 s of silence the first
    time on a machine) and after, with the seconds it took."""
    log.info("%s ...", f"joining the Ray cluster at {address}" if address
             else "starting a local Ray instance (the first start takes ~30 s)")
    began = time.perf_counter()
    try:       # "local": always a new instance, never a cluster that `ray start` left on this machine
        ray.init(address=address or "local", **kwargs)
    except ConnectionError as err:
        if not address:
            raise
        hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                "; a cluster started with token authentication (Ray's default for `ray start --head`) also needs "
                "RAY_AUTH_MODE=token here and its token (~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise ConfigError(f"--ray-address {address}: could not join the Ray cluster ({err}){hint}") from None
    log.info("Ray %s in %.1f s", "joined" if address else "started", time.perf_counter() - began)


class RayExecutor:
    """Runs each retrain (or chunk of retrains, for a task that trains many at once) as one Ray task (1 CPU, or ``task.num_gpus_per_retrain`` GPUs on CUDA).

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
            start_ray(ray, address, **kwargs)
        self.max_retries = max_retries
        self._fn = ray.remote(_remote_retrain)
        self.nodes: dict[str, int] = {}      # retrains per Ray node id, reported by ``close``

    @property
    def workers(self) -> int:
        """CPUs of the Ray cluster (one Ray task per CPU)."""
        return int(self.ray.cluster_resources().get("CPU", 1))

    def run(self, task: Task, jobs: list[Job], chunk: int = 0, order: str = "independent",
            checkpoints: int = 0, measure: str = "measurement") -> Iterator[tuple[int, int, Tensor]]:
        chunk = auto_chunk(task, len(jobs), self.workers, chunk, order, checkpoints)
        use_gpu = task.device.type == "cuda"
        opts = {"num_cpus": 1, "num_gpus": task.num_gpus_per_retrain if use_gpu else 0,
                "max_retries": self.max_retries, "retry_exceptions": False}
        config, numerics = config_dict(task.config), current_numerics(task)
        pending = {self._fn.options(**opts).remote(task.name, config, payload(group),
                                                   numerics, order, checkpoints, measure):
                   [(k, r) for k, r, _, _ in group] for group in chunks(jobs, chunk)}
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                keys = pending.pop(done[0])
                measured, node = self.ray.get(done[0])
                self.nodes[node] = self.nodes.get(node, 0) + len(keys)
                for (k, r), targets in zip(keys, measured):
                    yield k, r, targets
        finally:       # work left on a cluster is cancelled; an instance of our own is shut down by ``close``
            for ref in pending if not self._started else ():   # (thousands of cancels take a minute under load)
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.nodes:
            log.info("Ray ran %d retrains on %d node(s): %s", sum(self.nodes.values()), len(self.nodes),
                     ", ".join(f"{node[:8]} {n}" for node, n in sorted(self.nodes.items())))
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
