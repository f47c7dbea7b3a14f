"""Suites expand to settings that the registered tasks and methods accept."""
from __future__ import annotations

import pytest

from tdabench.api.config import parse_set_args
from tdabench.studies.presets import SUITES, get_suite
from tdabench.api.registry import METHODS, TASKS, UnknownNameError
from tdabench.engine.spec import RunSpec, resolve
from tdabench.studies.scaling import parse_vary

@pytest.fixture(scope="module")
def local_lm(tmp_path_factory) -> str:
    """A tiny random GPT-NeoX with 2,048 positions saved locally: the Hub's Pythia models are not here, and
    the language task's recommendations are read from the loaded model."""
    pytest.importorskip("transformers")
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tdabench.tasks.tinylm import train_tokenizer

    root = tmp_path_factory.mktemp("lm")
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=2048)).save_pretrained(root)
    train_tokenizer(["a b c d e f"] * 20, 300).save_pretrained(root)
    return str(root)


STEPS = [(suite.name, i, step) for suite in SUITES.values() for i, step in enumerate(suite.steps)]


@pytest.mark.parametrize("suite, index, step", STEPS, ids=[f"{s}-{i}" for s, i, _ in STEPS])
def test_every_suite_step_validates(suite, index, step, tmp_path, request):
    missing = [n for n in step.methods if n not in METHODS.names() or METHODS.get(n).missing_requirements()]
    if step.task not in TASKS.names() or missing:
        pytest.skip(f"not installed here: {step.task if step.task not in TASKS.names() else missing}")
    overrides = parse_set_args(list(step.sets))
    if step.vary:
        scope, key, values = parse_vary(step.vary)
        overrides.setdefault(scope, {})[key] = values[0]
    if step.task == "pythia":                 # every setting of the step but the model itself
        overrides.setdefault("task", {}).update(model_name=request.getfixturevalue("local_lm"), revision="")
    resolve(RunSpec(task=step.task, methods=step.methods, seeds=tuple(range(step.seeds)), overrides=overrides,
                     results_dir=tmp_path, device="cpu"))


def test_unknown_suite_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'kreer2025-cifar10'"):
        get_suite("kreer2025-cifar")
