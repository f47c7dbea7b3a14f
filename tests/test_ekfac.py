"""ekfac (kronfluence) against known answers: GradSim in the identity limit, the exact Gauss-Newton
influence function where K-FAC is exact, close to it where it is not, and factor reuse."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from conftest import make_context
from tdabench.runner import make_method
from tdabench.task import Task
from tdabench.tasks.regression import Regression, RegressionConfig

pytest.importorskip("kronfluence", reason="ekfac needs kronfluence (see the README's install notes)")
from tdabench.methods.ekfac import sampled_fisher, tracked_modules  # noqa: E402


def _ekfac(task, ctx, **overrides) -> torch.Tensor:
    method = make_method("ekfac", task, {k: str(v) for k, v in overrides.items()})
    method.fit(ctx)
    return method.score(ctx).double()


def test_identity_strategy_is_gradsim_over_n(tmp_path, small_regression):
    ctx = make_context(small_regression, tmp_path)
    identity = _ekfac(small_regression, ctx, strategy="identity")
    gradsim = make_method("gradsim", small_regression, {}).score(ctx).double()
    torch.testing.assert_close(identity * ctx.n_train, gradsim, rtol=1e-5, atol=1e-9)
    assert min(spearmanr(identity[:, j], gradsim[:, j])[0] for j in range(ctx.n_query)) > 0.99


def test_kfac_and_ekfac_are_the_exact_if_for_linear_least_squares(tmp_path):
    """One Linear layer, squared loss: the output Hessian is 1, so the sampled Fisher's gradient
    factor is exactly 1 and A ⊗ 1 is the Gauss-Newton matrix; with damping = the ridge strength,
    K-FAC and EK-FAC must reproduce the exact (undamped, regularised) influence function."""
    task = Regression(RegressionConfig(kind="linear", n_train=80, n_query=10, dim=5))
    ctx = make_context(task, tmp_path)
    exact = make_method("if", task, {"damping": "0"}).score(ctx).double()
    for strategy in ("kfac", "ekfac"):
        approx = _ekfac(task, ctx, strategy=strategy, damping=task.config.l2)
        torch.testing.assert_close(approx, exact, rtol=1e-4, atol=1e-10)
    diagonal = _ekfac(task, ctx, strategy="diagonal", damping=task.config.l2)
    assert (diagonal - exact).norm() > 0.05 * exact.norm()        # the diagonal drops cross terms


def test_ekfac_tracks_the_exact_if_on_logistic_regression(tmp_path):
    task = Regression(RegressionConfig(n_train=200, n_query=30))
    ctx = make_context(task, tmp_path)
    exact = make_method("if", task, {"curvature": "gauss_newton", "damping": "0"}).score(ctx).double()
    ekfac = _ekfac(task, ctx, damping=task.config.l2)
    diagonal = _ekfac(task, ctx, strategy="diagonal", damping=task.config.l2)
    assert torch.corrcoef(torch.stack([ekfac.flatten(), exact.flatten()]))[0, 1] > 0.95
    assert (ekfac - exact).norm() < (diagonal - exact).norm()       # EK-FAC keeps more of the curvature


def test_factors_are_fitted_once_and_reused(tmp_path, small_regression):
    ctx = make_context(small_regression, tmp_path)
    first = _ekfac(small_regression, ctx)
    files = {p: p.stat().st_mtime_ns for p in (ctx.cache_dir / "kronfluence").rglob("*.safetensors")}
    assert any("factors_" in str(p) for p in files)
    second = _ekfac(small_regression, ctx)                          # a new method object, same model
    assert {p: p.stat().st_mtime_ns for p in files} == files
    torch.testing.assert_close(first, second)
    _ekfac(small_regression, ctx, strategy="kfac")                  # other factor settings: other factors
    assert len(list((ctx.cache_dir / "kronfluence").rglob("factors_*"))) == 2


def test_tracked_modules_leave_out_wide_layers_and_follow_patterns():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 50_304))
    assert tracked_modules(model, (), 8192) == ["0"]
    assert tracked_modules(model, (), 0) == ["0", "2"]
    assert tracked_modules(model, (r"^2\.",), 0) == ["2"]
    assert tracked_modules(nn.Linear(3, 1), (), 8192) == [""]


def test_fisher_choice_needs_outputs_for_sampling(small_regression):
    class LossOnly(Regression):
        outputs = Task.outputs                                      # hides the outputs hook

    model, data = small_regression.make_model(0), small_regression.train_data()
    assert sampled_fisher(small_regression, model, data, "auto")
    assert not sampled_fisher(LossOnly(small_regression.config), model, data, "auto")
    with pytest.raises(ValueError, match="fisher=empirical"):
        sampled_fisher(LossOnly(small_regression.config), model, data, "sampled")
