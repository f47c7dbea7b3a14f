"""Suites expand to settings that the registered tasks and methods accept."""
from __future__ import annotations

import pytest

from tdabench.config import parse_set_args
from tdabench.presets import SUITES, get_suite
from tdabench.registry import METHODS, TASKS, UnknownNameError
from tdabench.spec import RunSpec, resolve
from tdabench.scaling import parse_vary

STEPS = [(suite.name, i, step) for suite in SUITES.values() for i, step in enumerate(suite.steps)]


@pytest.mark.parametrize("suite, index, step", STEPS, ids=[f"{s}-{i}" for s, i, _ in STEPS])
def test_every_suite_step_validates(suite, index, step, tmp_path):
    missing = [n for n in step.methods if n not in METHODS.names() or METHODS.get(n).missing_requirements()]
    if step.task not in TASKS.names() or missing:
        pytest.skip(f"not installed here: {step.task if step.task not in TASKS.names() else missing}")
    overrides = parse_set_args(list(step.sets))
    if step.vary:
        scope, key, values = parse_vary(step.vary)
        overrides.setdefault(scope, {})[key] = values[0]
    resolve(RunSpec(task=step.task, methods=step.methods, seeds=tuple(range(step.seeds)), overrides=overrides,
                     results_dir=tmp_path, device="cpu"))


def test_unknown_suite_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'kreer2025-cifar10'"):
        get_suite("kreer2025-cifar")
