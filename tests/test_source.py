"""source (SOURCE, 004 Section 4.2.1) against closed forms: the unrolled response of full-batch GD
on least squares (Exercise 4.5(b)), the influence-function limit ηK → ∞, the segment propagation of
Eq. 26 for a constant Hessian, the telescoping of segments, and factor reuse.

On one Linear layer with squared loss EK-FAC is exact (one output: the sampled Fisher's gradient
factor is exactly 1, and the corrected eigenvalues are the Hessian's), and GD's Jacobian is
I − η(H + l2·I): with ``damping = l2`` SOURCE's only approximation is (I − ηH)^K ≈ e^{−ηKH}.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_context
from tdabench.engine.spec import make_method
from tdabench.tasks.digits import Digits, DigitsConfig
from tdabench.tasks.regression import Regression, RegressionConfig

pytest.importorskip("kronfluence", reason="source needs kronfluence (see the README's install notes)")


def _linear(steps: int, lr: float, **kw: object) -> Regression:
    return Regression(RegressionConfig(kind="linear", n_train=40, n_query=6, dim=4, optimizer="gd",
                                       steps=steps, lr=lr, **kw))


def _source(task, ctx, **overrides) -> torch.Tensor:
    method = make_method("source", task, {k: str(v) for k, v in overrides.items()})
    method.fit(ctx)
    return method.score(ctx).double()


def _quadratic(task: Regression, state: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least squares at ``state``, by hand: H' = XᵀX/n + l2·I (features with a 1 for the bias),
    per-example training gradients [n, d+1] and query gradients [q, d+1]."""
    w = torch.cat([state["weight"].reshape(-1), state["bias"]]).double()

    def grads(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)                 # shape: [m, d+1]
        return (xa @ w - y)[:, None] * xa

    (x, y), (xq, yq) = task.train_data(), task.query_data()
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    hess = xa.T @ xa / len(x) + task.config.l2 * torch.eye(xa.shape[1], dtype=x.dtype)
    return hess, grads(x, y), grads(xq, yq)


def _response(hess: torch.Tensor, effort: float) -> torch.Tensor:
    """(I − e^{−effort·H}) H⁻¹."""
    eye = torch.eye(len(hess), dtype=hess.dtype)
    return (eye - torch.linalg.matrix_exp(-effort * hess)) @ torch.linalg.inv(hess)


def test_one_segment_is_the_closed_form_unrolled_response(tmp_path):
    """Exercise 4.5(b): score = ∇φᵀ r_K with r_K = −(1/n)[I − (I − ηH)^K] H⁻¹ ∇ℓ_i.  SOURCE uses
    e^{−ηKH} instead of (I − ηH)^K: equal to the exp form to float32 rounding (rtol 1e-5), and to the
    power form within the bound (1/n)‖∇φ‖‖∇ℓ_i‖·max_σ |e^{−ηKσ} − (1 − ησ)^K|/σ."""
    eta, k = 0.05, 30
    task = _linear(k, eta)
    ctx = make_context(task, tmp_path, n_checkpoints=1)
    hess, g, q = _quadratic(task, ctx.checkpoints[0].state)
    scores = _source(task, ctx, segments=1, damping=task.config.l2)
    n = ctx.n_train
    exp_form = -(g @ _response(hess, eta * k) @ q.T) / n
    torch.testing.assert_close(scores, exp_form, rtol=1e-5, atol=1e-9)
    eye = torch.eye(len(hess), dtype=hess.dtype)
    closed = -(g @ (eye - torch.linalg.matrix_power(eye - eta * hess, k)) @ torch.linalg.inv(hess) @ q.T) / n
    sigma = torch.linalg.eigvalsh(hess)
    gap = float(((torch.exp(-eta * k * sigma) - (1 - eta * sigma) ** k).abs() / sigma).max())
    bound = g.norm(dim=1)[:, None] * q.norm(dim=1)[None, :] * gap / n
    assert ((scores - closed).abs() <= bound + 1e-9).all()
    assert (scores - closed).norm() < 0.02 * closed.norm()


def test_long_training_limit_is_the_influence_function(tmp_path):
    """F_r(σ) → 1/σ as ηK grows: SOURCE approaches the exact IF (regulariser in H, no damping) and
    equals it, and ``ekfac`` with damping = l2, once e^{−ηKσ_min} is negligible."""
    errors = []
    for steps in (2, 6, 2000):
        task = _linear(steps, 0.5)
        ctx = make_context(task, tmp_path / str(steps), n_checkpoints=1)
        exact = make_method("if", task, {"damping": "0"}).score(ctx).double()
        scores = _source(task, ctx, segments=1, damping=task.config.l2)
        errors.append(float((scores - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors
    ekfac = make_method("ekfac", task, {"damping": str(task.config.l2)})
    ekfac.fit(ctx)
    torch.testing.assert_close(scores, ekfac.score(ctx).double(), rtol=1e-5, atol=1e-9)


def test_segments_propagate_by_the_matrix_exponential(tmp_path):
    """Eq. 26 + 30 with a constant Hessian: Σ_ℓ −(1/n) ḡ_ℓᵀ (I − e^{−c_ℓH})H⁻¹ e^{−c_{ℓ+1}H}⋯e^{−c_LH} ∇φ
    with c_ℓ = η·K_ℓ and ḡ_ℓ the mean gradient over the segment's two checkpoints, by hand."""
    eta = 0.05
    task = _linear(60, eta)
    ctx = make_context(task, tmp_path, n_checkpoints=6)
    scores = _source(task, ctx, segments=3, checkpoints_per_segment=2, damping=task.config.l2)
    hess, _, q = _quadratic(task, ctx.checkpoints[-1].state)
    expected, v = torch.zeros_like(scores), q.T                                       # v: [d+1, n_query]
    for seg in (2, 1, 0):
        pair = ctx.checkpoints[2 * seg : 2 * seg + 2]
        g_bar = sum(_quadratic(task, c.state)[1] for c in pair) / 2
        effort = eta * sum(c.steps_since_previous for c in pair)
        expected -= g_bar @ _response(hess, effort) @ v / ctx.n_train
        v = torch.linalg.matrix_exp(-effort * hess) @ v
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-9)


def test_segments_telescope_when_the_model_does_not_move(tmp_path):
    """With every checkpoint at the same parameters the segment factors coincide and
    Σ_ℓ F_r(c_ℓ) Π_{ℓ'>ℓ} S(c_ℓ') = F_r(Σ c_ℓ): four segments score like one segment of four
    checkpoints (on a two-layer MLP, so the module layout and bias columns are exercised)."""
    task = Digits(DigitsConfig(n_train=60, n_query=5, hidden=8, epochs=2, batch_size=16))
    ctx = make_context(task, tmp_path, n_checkpoints=4)
    final = ctx.checkpoints[-1].state
    ctx.checkpoints = [dataclasses.replace(c, state=final) for c in ctx.checkpoints]
    four = _source(task, ctx, segments=4)
    one = _source(task, ctx, segments=1, checkpoints_per_segment=4)
    torch.testing.assert_close(four, one, rtol=1e-4, atol=1e-7)


def test_infinite_effort_equals_ekfac_on_an_mlp(tmp_path):
    """One segment with ηK → ∞ applies (σ + λ)⁻¹ in kronfluence's eigenbasis: the ``ekfac`` scores
    with the same damping, on a model with two Linear layers and biases."""
    task = Digits(DigitsConfig(n_train=60, n_query=5, hidden=8, epochs=2, batch_size=16))
    ctx = make_context(task, tmp_path, n_checkpoints=1)
    ctx.checkpoints = [dataclasses.replace(ctx.checkpoints[0], lr=1e9)]
    scores = _source(task, ctx, segments=1, damping=0.01)
    ekfac = make_method("ekfac", task, {"damping": "0.01"})
    ekfac.fit(ctx)
    torch.testing.assert_close(scores, ekfac.score(ctx).double(), rtol=1e-4, atol=1e-6)


def test_factors_are_fitted_per_segment_once_and_reused(tmp_path):
    task = _linear(40, 0.1)
    ctx = make_context(task, tmp_path, n_checkpoints=2)
    first = _source(task, ctx, segments=2)
    files = {p: p.stat().st_mtime_ns for p in (ctx.cache_dir / "kronfluence").rglob("*.safetensors")}
    assert len(list((ctx.cache_dir / "kronfluence").glob("*/factors_*"))) == 2       # one per checkpoint
    second = _source(task, ctx, segments=2)                                          # a new method object
    assert {p: p.stat().st_mtime_ns for p in files} == files
    torch.testing.assert_close(first, second)


def test_bad_settings_are_refused(tmp_path):
    task = _linear(20, 0.1)
    with pytest.raises(ValueError, match="segments"):
        make_method("source", task, {"segments": "0"})
    with pytest.raises(ValueError, match="damping"):
        make_method("source", task, {"damping": "-1"})
    method = make_method("source", task, {"segments": "2"})
    assert method.needs_checkpoints == 2
    with pytest.raises(ValueError, match="needs 2 checkpoints"):
        method.fit(make_context(task, tmp_path, n_checkpoints=1))


def test_queries_in_passes_give_the_scores_of_one_pass(tmp_path):
    """``source.query_batch`` bounds the query side ([Q, out, a] per module, held twice: 160 GB for CIFAR-10's
    10,000 queries at full width); passes of 2 of 5 queries give the one-pass scores."""
    task = Digits(DigitsConfig(n_train=60, n_query=5, hidden=8, epochs=2, batch_size=16))
    ctx = make_context(task, tmp_path, n_checkpoints=2)
    whole = _source(task, ctx, segments=2)
    parts = _source(task, ctx, segments=2, query_batch=2)
    assert parts.shape == whole.shape == (60, 5)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="query_batch"):
        make_method("source", task, {"query_batch": "-1"})
