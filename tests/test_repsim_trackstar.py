"""repsim and trackstar against hand computations and their limit cases (gradsim)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_context
from tdabench.api.config import ConfigError
from tdabench.toolkit.grads import per_example_grads, select_params
from tdabench.api.method import Context
from tdabench.engine.spec import make_method
from tdabench.tasks.digits import Digits, DigitsConfig


@pytest.fixture
def digits_ctx(tmp_path) -> Context:
    return make_context(Digits(DigitsConfig(n_train=40, n_query=10, epochs=2)), tmp_path)


def neg_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """−cos between the rows of ``a`` [n, h] and ``b`` [m, h]: shape [n, m]."""
    return -(F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T).float()


def test_repsim_is_minus_cosine_of_the_hidden_layer(digits_ctx):
    model, x_train, x_query = digits_ctx.model, digits_ctx.train_data[0], digits_ctx.query_data[0]
    with torch.no_grad():
        hidden = lambda x: torch.relu(model[0](x))          # noqa: E731  the input of model[2], the last Linear
        expected = neg_cos(hidden(x_train), hidden(x_query))                  # shape: [40, 10]
    scores = make_method("repsim", digits_ctx.task, {}).score(digits_ctx)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    dot = make_method("repsim", digits_ctx.task, {"normalize": "false"}).score(digits_ctx)
    with torch.no_grad():
        torch.testing.assert_close(dot, -(hidden(x_train) @ hidden(x_query).T), rtol=1e-5, atol=1e-5)


def test_repsim_module_setting_selects_the_module_and_refuses_unknown_names(digits_ctx):
    raw = make_method("repsim", digits_ctx.task, {"module": "0"}).score(digits_ctx)    # input of the first Linear
    torch.testing.assert_close(raw, neg_cos(digits_ctx.train_data[0], digits_ctx.query_data[0]), rtol=1e-5, atol=1e-5)
    method = make_method("repsim", digits_ctx.task, {"module": "head"})
    with pytest.raises(ValueError, match=r"repsim\.module='head'.*'0', '1', '2'"):
        method.check(digits_ctx.task)                       # before any training
    with pytest.raises(ValueError, match=r"repsim\.module"):
        method.score(digits_ctx)


def test_trackstar_without_second_moment_is_gradsim(digits_ctx):
    task = digits_ctx.task
    plain = {"second_moment": "false", "normalize": "false"}
    torch.testing.assert_close(make_method("trackstar", task, {"second_moment": "false"}).score(digits_ctx),
                               make_method("gradsim", task, {"normalize": "true"}).score(digits_ctx),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(make_method("trackstar", task, plain).score(digits_ctx),
                               make_method("gradsim", task, {}).score(digits_ctx), rtol=1e-5, atol=1e-5)


def test_trackstar_second_moment_matches_a_hand_computation(tmp_path, small_regression):
    ctx = make_context(small_regression, tmp_path)
    params = select_params(ctx.model)
    g = per_example_grads(ctx.model, small_regression.loss, ctx.train_data, params)           # shape: [40, 5]
    q = per_example_grads(ctx.model, small_regression.measurement, ctx.query_data, params)    # shape: [8, 5]
    v = (g**2).mean(0)
    scale = (v + 1e-8).rsqrt()
    expected = -(F.normalize(g * scale, dim=1) @ F.normalize(q * scale, dim=1).T).float()
    method = make_method("trackstar", small_regression, {})
    method.fit(ctx)
    scores = method.score(ctx)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert method.extras()["v_mean"] == pytest.approx(float(v.mean()), rel=1e-9)
    assert method.extras()["v_min"] == pytest.approx(float(v.min()), rel=1e-9)
    uncorrected = make_method("trackstar", small_regression, {"second_moment": "false"}).score(ctx)
    assert (uncorrected - expected).abs().max() > 1e-3     # the correction changes the scores


def test_trackstar_ignores_batch_size(digits_ctx):
    small = make_method("trackstar", digits_ctx.task, {"batch_size": "7"}).score(digits_ctx)
    large = make_method("trackstar", digits_ctx.task, {"batch_size": "64"}).score(digits_ctx)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-6)


def test_trackstar_projection_preserves_scores_approximately(digits_ctx):
    exact = make_method("trackstar", digits_ctx.task, {}).score(digits_ctx).flatten()
    projected = make_method("trackstar", digits_ctx.task, {"proj_dim": "2000"}).score(digits_ctx).flatten()
    assert not torch.equal(exact, projected)
    assert torch.corrcoef(torch.stack([exact, projected]))[0, 1] > 0.95      # Johnson-Lindenstrauss


@pytest.mark.parametrize("name, field, bad", [("repsim", "batch_size", 0), ("repsim", "module", 3),
                                              ("trackstar", "eps", 0.0), ("trackstar", "proj_dim", -1),
                                              ("trackstar", "batch_size", 0), ("trackstar", "patterns", ("[",))])
def test_bad_settings_fail_when_the_config_is_built(name, field, bad):
    from tdabench.api.registry import METHODS

    with pytest.raises(ConfigError, match=rf"{name}\.{field}="):
        METHODS.get(name).Config(**{field: bad})


def test_repsim_mean_pools_sequence_representations():
    from tdabench.methods.repsim import find_module, representations

    model = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(0))       # shape: [B, T, h]
    h = representations(model, find_module(model, ""), lambda m, b: m(b[0]).sum((1, 2)), (x,), batch_size=2)
    torch.testing.assert_close(h, torch.tanh(x).mean(1).double())               # shape: [B, h]
