"""Methods against known answers: the sign contract, leave-one-out retraining, limit cases."""
from __future__ import annotations

from functools import cached_property

import pytest
import torch

from conftest import make_context
from tdabench.toolkit.grads import per_example_grads, select_params
from tdabench.api.registry import METHODS
from tdabench.engine.spec import make_method
from tdabench.api.task import take
from tdabench.tasks.digits import Digits, DigitsConfig
from tdabench.tasks.regression import Regression, RegressionConfig


class DuplicatedQuery(Regression):
    """Logistic regression whose query 0 is a far-out point labelled against the data's trend (the
    model cannot fit it, so its gradient is the largest), with an exact copy at train index 0."""

    @cached_property
    def _data(self):
        (xt, yt), (xq, yq) = super()._data
        xq, yq, xt, yt = xq.clone(), yq.clone(), xt.clone(), yt.clone()
        trend = xt[yt == 1].mean(0) - xt[yt == 0].mean(0)
        xq[0] = 4.0 * trend / trend.norm()      # deep on the positive side ...
        yq[0] = self.query_label                 # ... labelled negative (query_label 0)
        xt[0], yt[0] = xq[0], yq[0]
        return (xt, yt), (xq, yq)

    query_label = 0.0


class DuplicatedFittedQuery(DuplicatedQuery):
    """The same far-out query and copy, labelled *with* the trend: the model fits it.  For methods that
    explain the model's prediction rather than its loss (``explains = "prediction"``, e.g. RPS, which
    re-fits the last layer to the model's own outputs): a copy of a mislabelled query supports the
    prediction, against the label, so only a fitted query tests their sign."""

    query_label = 1.0


@pytest.mark.parametrize("name", METHODS.names())
def test_sign_contract_copy_of_query_is_most_negative(name, tmp_path):
    cls = METHODS.get(name)
    if not cls.informative:
        pytest.skip(f"{name} is a no-information baseline")
    if cls.missing_requirements():
        pytest.skip(f"{name} needs {cls.missing_requirements()}")
    fixture = DuplicatedFittedQuery if getattr(cls, "explains", "loss") == "prediction" else DuplicatedQuery
    task = fixture(RegressionConfig(n_train=60, n_query=6, dim=5, noise=0.1, l2=0.05,
                                             optimizer="gd", steps=300, lr=1.0))
    method = make_method(name, task, {})
    ctx = make_context(task, tmp_path, n_checkpoints=method.needs_checkpoints, spacing=method.checkpoint_spacing)
    method.fit(ctx)
    scores = method.score(ctx)
    assert scores.shape == (60, 6)
    if fixture is DuplicatedFittedQuery:   # weights ∝ the re-fit's residual, small on a fitted copy: its sign only
        assert float(scores[0, 0]) < 0, f"{name}: the copy of a fitted query supports its prediction (negative score)"
    else:
        assert int(scores[:, 0].argmin()) == 0, f"{name}: the copy of query 0 should have the most negative score"


def _loo_relative_error(n: int, tmp_path) -> float:
    """Mean relative error of the IF against leave-one-out retraining, over 4 examples."""
    task = Regression(RegressionConfig(n_train=n, n_query=20, dim=5))
    ctx = make_context(task, tmp_path / str(n))
    scores = make_method("if", task, {"damping": "0"}).score(ctx)           # shape: [n, 20]
    full = task.measure(ctx.model, task.query_data())
    errors = []
    for i in (0, n // 3, n // 2, n - 1):
        keep = torch.cat([torch.arange(i), torch.arange(i + 1, n)])
        model = task.train(task.make_model(0), keep, seed=0)
        actual = (full - task.measure(model, task.query_data())).double()    # effect of including i
        predicted = scores[i].double()
        assert torch.corrcoef(torch.stack([actual, predicted]))[0, 1] > 0.99
        errors.append(float((predicted - actual).norm() / actual.norm()))
    return sum(errors) / len(errors)


def test_if_matches_leave_one_out_retraining_to_first_order(tmp_path):
    """The IF is the first-order LOO effect: its relative error shrinks like 1/n."""
    coarse, fine = _loo_relative_error(100, tmp_path), _loo_relative_error(800, tmp_path)
    assert fine < 0.03
    assert fine < coarse / 4          # 8x the data: ~1/8 the error if first order is right


def test_if_damping_to_infinity_becomes_scaled_gradsim(tmp_path, small_regression):
    ctx = make_context(small_regression, tmp_path)
    lam = 1e8
    ifs = make_method("if", small_regression, {"damping": str(lam)}).score(ctx)
    gs = make_method("gradsim", small_regression, {}).score(ctx)
    torch.testing.assert_close(ifs * lam * ctx.n_train, gs, rtol=1e-4, atol=1e-6)


def test_gauss_newton_equals_hessian_for_linear_least_squares(tmp_path):
    task = Regression(RegressionConfig(n_train=40, n_query=8, dim=4, kind="linear"))
    ctx = make_context(task, tmp_path)
    h = make_method("if", task, {"curvature": "hessian"}).score(ctx)
    gn = make_method("if", task, {"curvature": "gauss_newton"}).score(ctx)
    torch.testing.assert_close(h, gn, rtol=1e-5, atol=1e-8)


def test_if_refuses_models_above_the_parameter_limit(tmp_path):
    task = Digits(DigitsConfig(n_train=50, n_query=5, epochs=1))
    with pytest.raises(ValueError, match="max_params"):
        make_method("if", task, {"max_params": "100"}).score(make_context(task, tmp_path))


def test_per_example_grads_match_a_backward_loop_and_ignore_batch_size(tmp_path):
    task = Digits(DigitsConfig(n_train=30, n_query=5, epochs=1))
    ctx = make_context(task, tmp_path)
    params = select_params(ctx.model)
    fast = per_example_grads(ctx.model, task.loss, ctx.train_data, params, batch_size=7)
    other = per_example_grads(ctx.model, task.loss, ctx.train_data, params, batch_size=30)
    torch.testing.assert_close(fast, other, rtol=1e-5, atol=1e-7)
    for i in (0, 13, 29):
        ctx.model.zero_grad()
        task.loss(ctx.model, take(ctx.train_data, torch.tensor([i]))).sum().backward()
        loop = torch.cat([p.grad.reshape(-1) for p in params.values()])
        torch.testing.assert_close(fast[i], loop, rtol=1e-5, atol=1e-7)


def test_gradsim_projection_preserves_scores_approximately(tmp_path):
    task = Digits(DigitsConfig(n_train=40, n_query=10, epochs=2))
    ctx = make_context(task, tmp_path)
    exact = make_method("gradsim", task, {}).score(ctx).flatten()
    projected = make_method("gradsim", task, {"proj_dim": "2048"}).score(ctx).flatten()
    assert torch.corrcoef(torch.stack([exact, projected]))[0, 1] > 0.95      # Johnson-Lindenstrauss


def test_random_is_seeded():
    from tdabench.methods.random import RandomScores

    assert RandomScores.informative is False


def test_projector_blocks_equal_the_cached_matrix_and_preserve_dot_products():
    from tdabench.toolkit.grads import Projector

    g = torch.randn(6, 3000, generator=torch.Generator().manual_seed(0))
    cached = Projector(3000, 512, seed=5, device=torch.device("cpu"), block=700)
    streamed = Projector(3000, 512, seed=5, device=torch.device("cpu"), block=700, cache_limit=0)
    assert cached._matrix is not None and streamed._matrix is None
    torch.testing.assert_close(cached(g), streamed(g), rtol=1e-5, atol=1e-5)
    exact, approx = g @ g.T, cached(g) @ cached(g).T                       # JL: ≈ preserved
    assert (approx.diag() / exact.diag() - 1).abs().max() < 0.25


def test_a_regenerated_projection_is_drawn_once_per_gathered_group(tmp_path, monkeypatch):
    """per_example_grads in passes of 2 with a projection too large to keep: the gradients of several
    passes are projected together (one draw of the matrix for all of them, up to GATHER_BYTES), and
    the result equals one projection per pass bit for bit."""
    from tdabench.toolkit import grads
    from tdabench.toolkit.grads import Projector

    task = Digits(DigitsConfig(n_train=30, n_query=5, epochs=1))
    ctx = make_context(task, tmp_path)
    params = select_params(ctx.model)
    d = grads.num_params(params)
    proj = Projector(d, 64, seed=3, device=torch.device("cpu"), block=500, cache_limit=0)
    draws = []
    monkeypatch.setattr(proj, "_rows", lambda s, real=proj._rows: draws.append(s) or real(s))
    blocks = -(-d // 500)
    one_by_one = torch.cat([proj(g) for g in per_example_grads(ctx.model, task.loss, ctx.train_data, params, 2).split(2)])
    assert len(draws) == 15 * blocks                                            # 15 passes, one draw each
    draws.clear()
    gathered = per_example_grads(ctx.model, task.loss, ctx.train_data, params, 2, proj)
    assert len(draws) == blocks                                                  # 30 × d floats ≪ 2 GiB: one group
    assert torch.equal(gathered, one_by_one)
    draws.clear()
    monkeypatch.setattr(grads, "GATHER_BYTES", 4 * 4 * d)                       # four examples' gradients
    monkeypatch.setattr(grads.project_all, "__defaults__", (grads.GATHER_BYTES,))
    assert torch.equal(per_example_grads(ctx.model, task.loss, ctx.train_data, params, 2, proj), one_by_one)
    assert len(draws) == 8 * blocks                                              # groups of two passes
