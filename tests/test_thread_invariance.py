"""Scores do not depend on the number of torch threads beyond float summation order (issue #17),
and the record names the thread count that produced them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import make_context
from tdabench.engine.records import environment
from tdabench.engine.spec import make_method
from tdabench.tasks.digits import Digits, DigitsConfig


@pytest.fixture
def threads():
    from tdabench.toolkit import threads as policy

    before, pinned = torch.get_num_threads(), policy.pinned()
    policy.pin(None)                          # the policy on, whatever ran before
    yield
    policy.pin(pinned)
    torch.set_num_threads(before)


@pytest.mark.parametrize("name, overrides", [("if", {}), ("ekfac", {}), ("gradsim", {}), ("trak", {"models": "2"})])
def test_scores_agree_at_one_and_two_threads(tmp_path, threads, name, overrides):
    """Measured on this machine: if, ekfac, source and gradsim bitwise equal at 1 and 2 threads; trak
    within 1.3e-5 (its ensemble members are trained while it fits, and CPU training sums in a
    thread-dependent order)."""
    task = Digits(DigitsConfig(n_train=300, n_query=40))
    ctx = make_context(task, tmp_path / "model")
    scores = []
    for n in (1, 2):
        torch.set_num_threads(n)
        method = make_method(name, task, overrides)
        own = dataclasses.replace(ctx, cache_dir=tmp_path / f"cache-{n}")     # nothing cached is shared
        own.cache_dir.mkdir()
        method.fit(own)
        scores.append(method.score(own).double())
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-4, atol=1e-4 * float(scores[0].abs().max()))


def test_the_record_names_the_thread_count(threads):
    torch.set_num_threads(1)
    assert environment("cpu")["torch_threads"] == 1


# ----- threads chosen by size and by idle cores (toolkit/threads.py, issue 38) ---------------------------

def test_small_models_train_on_one_thread_and_the_rest_on_the_idle_cores(threads, monkeypatch):
    from tdabench.toolkit import threads as policy

    torch.set_num_threads(2)
    monkeypatch.setattr(policy, "_cores", lambda: 2)
    quiet, busy = (lambda: 2.0), (lambda: 0.1)
    assert policy.choose(policy.PARALLEL_FROM - 1, quiet).threads == 1         # a small model: one thread, even quiet
    assert policy.choose(policy.PARALLEL_FROM, quiet).threads == 2             # a large one on a quiet machine: both
    assert policy.choose(policy.PARALLEL_FROM, busy).threads == 1              # ... on a busy one: one
    assert policy.choose(None, (lambda: 1.4)).threads == 1                     # a method's stages: the idle cores, rounded
    assert policy.choose(None, (lambda: 64.0)).threads == 2                    # never more than torch's own count
    torch.set_num_threads(1)
    assert policy.choose(None, (lambda: 64.0)).threads == 1                    # --threads 1 / OMP_NUM_THREADS=1 is a ceiling


def test_pinned_threads_switch_the_policy_off_and_chosen_restores_the_count(threads, monkeypatch):
    from tdabench.toolkit import threads as policy

    torch.set_num_threads(2)
    monkeypatch.setattr(policy, "_cores", lambda: 2)
    monkeypatch.setattr(policy, "idle_cores", lambda: 2.0)
    with policy.pinned_to(1):
        assert policy.choose(10 ** 9).threads == 1 and torch.get_num_threads() == 1
        with policy.chosen(lambda: 10 ** 9) as c:
            assert c.threads == 1 and c.why.startswith("pinned")
    assert policy.pinned() is None and torch.get_num_threads() == 2
    with policy.chosen(lambda: 10):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with policy.chosen(lambda: 10, "cuda") as c:                               # off the CPU nothing changes
        assert c is None and torch.get_num_threads() == 2


def test_idle_cores_are_the_idle_share_of_the_cpu_time_between_two_samples(monkeypatch):
    from tdabench.toolkit import threads as policy

    samples = iter([(1000.0, 4000.0), (1030.0, 4100.0)])                      # (idle, total) jiffies
    monkeypatch.setattr(policy, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(policy.os, "cpu_count", lambda: 4)
    assert policy.idle_cores(0.0) == pytest.approx(4 * 30 / 100)
    monkeypatch.setattr(policy, "_cpu_times", lambda: None)                   # no /proc/stat: the load average
    monkeypatch.setattr(policy.os, "getloadavg", lambda: (3.5, 0.0, 0.0))
    assert policy.idle_cores(0.0) == pytest.approx(0.5)


def test_a_record_names_the_threads_its_fit_and_score_ran_on_and_why(tmp_path, threads, monkeypatch):
    from tdabench.engine import pipeline
    from tdabench.engine.spec import RunSpec
    from tdabench.toolkit import threads as policy

    torch.set_num_threads(2)
    monkeypatch.setattr(policy, "_cores", lambda: 2)
    monkeypatch.setattr(policy, "idle_cores", lambda: 0.3)                    # a busy machine
    seen = []
    real = Digits.train

    def train(self, model, indices, seed, *args, **kwargs):      # the reference model, and any one-model retrain
        seen.append(torch.get_num_threads())
        return real(self, model, indices, seed, *args, **kwargs)

    monkeypatch.setattr(Digits, "train", train)
    spec = RunSpec(task="digits", methods=("gradsim",), seeds=(0,), results_dir=tmp_path, executor="serial",
                   overrides={"task": {"n_train": "60", "n_query": "8"}, "gt": {"num_subsets": "8", "retrain_seeds": "1"}})
    summaries, failures = pipeline.evaluate(spec)
    assert not failures
    from tdabench.engine.records import RunResult

    record = RunResult.load(next((tmp_path / "runs" / "digits" / "gradsim").rglob("seed0.json")))
    assert record.environment["torch_threads"] == 1 and "idle cores" in record.environment["thread_policy"]
    assert seen and set(seen) == {1}                                            # a 2,410-parameter MLP: one thread
    assert torch.get_num_threads() == 2                                         # restored after the run


def test_the_cli_pins_threads_for_its_command_only(threads, monkeypatch):
    import importlib

    from tdabench.cli import commands
    from tdabench.cli.commands import COMMANDS
    from tdabench.toolkit import threads as policy

    cli = importlib.import_module("tdabench.cli.main")
    seen = []
    record = lambda args: seen.append((policy.pinned(), torch.get_num_threads())) or 0      # noqa: E731
    monkeypatch.setattr(commands, "COMMANDS", tuple(dataclasses.replace(c, run=record) if c.name == "run" else c
                                                    for c in COMMANDS))
    torch.set_num_threads(2)
    assert cli.main(["run", "--task", "digits", "--method", "random", "--threads", "1"]) == 0
    assert seen == [(1, 1)] and policy.pinned() is None and torch.get_num_threads() == 2
