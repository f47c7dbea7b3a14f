"""magic (exact metagradients by REPLAY) against the closed form of unrolled GD, finite differences of
weighted retraining, and itself under every checkpoint-tree shape; Task.unroll against Task.train."""
from __future__ import annotations

import pytest
import torch

from conftest import make_context
from tdabench.toolkit.metagrad import Replay
from tdabench.engine.spec import make_method
from tdabench.tasks.digits import Digits, DigitsConfig
from tdabench.tasks.regression import Regression, RegressionConfig
from tdabench.api.unroll import stateless


def _linear(**kw) -> Regression:
    return Regression(RegressionConfig(**{"kind": "linear", "n_train": 30, "n_query": 7, "dim": 4, "optimizer": "gd",
                                          "steps": 25, "lr": 0.3, **kw}))


def _digits(**kw) -> Digits:
    return Digits(DigitsConfig(**{"n_train": 96, "n_query": 12, "hidden": 8, "epochs": 2, "batch_size": 16, **kw}))


def _magic(task, ctx, **overrides) -> torch.Tensor:
    return make_method("magic", task, {k: str(v) for k, v in overrides.items()}).score(ctx).double()


def _phi(task, unroll):
    template = unroll.model(unroll.initial())
    return lambda p: task.measurement(stateless(template, p), task.query_data())


@pytest.mark.parametrize("make", [_linear, _digits], ids=["regression-gd", "digits-adam"])
def test_chaining_the_steps_is_train(make):
    """The unrolled run with β = 1 lands where ``train`` does (same init, order, optimiser)."""
    task = make()
    model = task.make_model(3)
    task.train(model, torch.arange(task.n_train), 11)
    final = task.unroll(task.make_model(3), torch.arange(task.n_train), 11).run()["params"]
    for name, p in model.named_parameters():
        torch.testing.assert_close(final[name], p.detach(), rtol=1e-5, atol=1e-6)


def test_regression_equals_the_unrolled_gd_recursion(tmp_path):
    """Least squares, GD w_{t+1} = w_t − η[(1/N)Σβ_i∇ℓ_i(w_t) + l2·w_t]: with H = XᵀX/N + l2·I,
    ∂w_T/∂β_i = −(η/N) Σ_t (I − ηH)^{T−1−t} ∇ℓ_i(w_t) and the score is ∇φ_j(w_T)ᵀ ∂w_T/∂β_i."""
    task = _linear()
    ctx = make_context(task, tmp_path)
    c, n = task.config, task.n_train
    (x, y), (xq, yq) = task.train_data(), task.query_data()
    xa, xqa = (torch.cat([t, torch.ones(len(t), 1, dtype=t.dtype)], 1) for t in (x, xq))       # [n, d+1]
    model = task.make_model(ctx.train_seed)
    w = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    eye = torch.eye(len(w), dtype=w.dtype)
    jac = eye - c.lr * (xa.T @ xa / n + c.l2 * eye)                                            # ∂w_{t+1}/∂w_t
    dw = torch.zeros(n, len(w), dtype=w.dtype)                                                 # ∂w_t/∂β_i, rows i
    for _ in range(c.steps):
        dw = dw @ jac.T - (c.lr / n) * (xa @ w - y)[:, None] * xa
        w = jac @ w + (c.lr / n) * xa.T @ y
    closed = dw @ ((xqa @ w - yq)[:, None] * xqa).T                                            # [n, q]
    scores = _magic(task, ctx, branching=0)
    torch.testing.assert_close(scores, closed, rtol=1e-6, atol=1e-6 * float(closed.abs().max()))


def _double(task: Digits) -> Digits:
    """The same task with float64 data (its unroll then runs in float64 from a float64 model)."""
    (x, y), (xq, yq) = task._split
    task.__dict__["_split"] = ((x.double(), y), (xq.double(), yq))
    return task


def test_digits_matches_finite_differences_of_weighted_retraining(tmp_path):
    """Central differences (φ(β_i = 1 + ε) − φ(β_i = 1 − ε))/2ε of the same run (float64) converge to
    magic's scores at O(ε²); the method's float32 scores agree with the float64 metagradient."""
    task = _double(_digits())
    unroll = task.unroll(task.make_model(5).double(), torch.arange(task.n_train), 5)
    phi = _phi(task, unroll)
    exact, _ = Replay(unroll, 2)(phi, unroll.ones().double())
    for i in (0, 17, 41, 95):
        errors = []
        for eps in (1e-2, 1e-3):
            plus, minus = unroll.ones().double(), unroll.ones().double()
            plus[i], minus[i] = 1 + eps, 1 - eps
            fd = (phi(unroll.run(plus)["params"]) - phi(unroll.run(minus)["params"])) / (2 * eps)
            errors.append(float((fd - exact[i]).abs().max() / exact[i].abs().max()))
        assert errors[1] < 1e-5 and errors[1] < errors[0] / 30, (i, errors)     # O(ε²): 100× per decade
    task32 = _digits()
    ctx = make_context(task32, tmp_path)
    unroll = task.unroll(task.make_model(ctx.train_seed).double(), torch.arange(task.n_train), ctx.train_seed)
    exact, _ = Replay(unroll, 0)(_phi(task, unroll), unroll.ones().double())
    torch.testing.assert_close(_magic(task32, ctx), exact, rtol=1e-3, atol=1e-4 * float(exact.abs().max()))


def test_replay_tree_shapes_agree_and_memory_follows_the_tree(tmp_path):
    """k = 2, 4 and full storage give the same scores; the states held grow like (k−1)·log_k T, not T."""
    task = _digits(epochs=4)
    ctx = make_context(task, tmp_path)
    unroll = task.unroll(task.make_model(ctx.train_seed), torch.arange(task.n_train), ctx.train_seed)
    phi = _phi(task, unroll)
    runs = {k: Replay(unroll, k) for k in (0, 2, 4)}
    scores = {k: r(phi, unroll.ones())[0] for k, r in runs.items()}
    for k in (2, 4):
        torch.testing.assert_close(scores[k], scores[0], rtol=1e-5, atol=1e-7)
    steps = unroll.steps                                                            # 4 epochs × 6 batches
    assert runs[0].stats.peak_stored_states == steps - 1
    assert runs[2].stats.peak_stored_states <= (steps - 1).bit_length()
    assert runs[2].stats.forward_steps <= steps * (steps - 1).bit_length()
    assert runs[0].stats.forward_steps == steps


def test_tasks_without_the_hook_are_refused_with_its_name(tmp_path, capsys):
    """Through the CLI, before any training: the message names the hook and the fix, no traceback."""
    from tdabench import cli

    for sets, expected in ((["task.optimizer=lbfgs"], ["Task.unroll", "task.optimizer=gd"]),
                           (["task.optimizer=gd", "magic.branching=1"], ["magic.branching=1"])):
        args = ["run", "--task", "regression", "--method", "magic", "--serial", "--results-dir", str(tmp_path)]
        assert cli.main(args + [a for s in sets for a in ("--set", s)]) == 2
        err = capsys.readouterr().err
        assert all(e in err for e in expected) and "Traceback" not in err, err
    assert not (tmp_path / "ground_truth").exists() and not (tmp_path / "models").exists()


def test_a_model_that_is_not_the_end_of_the_run_is_refused_before_the_backward_pass(tmp_path, monkeypatch):
    """A stagewise checkpoint (here: the run stopped after 10 of 25 steps) is another model: refused."""
    task = _linear()
    ctx = make_context(task, tmp_path)
    early = task.make_model(ctx.train_seed)
    _linear(steps=10).train(early, torch.arange(task.n_train), ctx.train_seed)
    ctx.model = early
    monkeypatch.setattr(Replay, "_sweep", lambda *a: pytest.fail("the backward pass started"))
    with pytest.raises(RuntimeError, match="does not end at the given model"):
        _magic(task, ctx)


@pytest.mark.parametrize("opt", [
    dict(kind="adam", lr=0.01, weight_decay=1e-3), dict(kind="adam", lr=0.02),
    dict(kind="adamw", lr=0.01, weight_decay=0.1, schedule=lambda t: 1 - t / 40),
    dict(kind="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3), dict(kind="sgd", lr=0.2)],
    ids=["adam-l2", "adam", "adamw-schedule", "sgd-momentum-l2", "sgd"])
def test_the_closed_form_adjoint_of_each_update_is_autograds(opt):
    """REPLAY's backward pass with the optimiser's update differentiated by hand (toolkit/adjoints.py)
    equals autograd's through the whole run, in float64, to 1e-10 (issue 38)."""
    from tdabench.api.unroll import Optimizer

    task = _double(_digits())
    unroll = task.unroll(task.make_model(5).double(), torch.arange(task.n_train), 5)
    unroll.optimizer = Optimizer(**opt)
    phi, ones = _phi(task, unroll), unroll.ones().double()
    by_hand = Replay(unroll, 2, adjoint="closed-form")
    by_autograd = Replay(unroll, 2, adjoint="autograd")
    hand, _ = by_hand(phi, ones)
    auto, _ = by_autograd(phi, ones)
    assert by_hand.adjoint == "closed-form" and float(auto.abs().max()) > 1e-3     # a real signal to compare
    torch.testing.assert_close(hand, auto, rtol=1e-10, atol=1e-10 * float(auto.abs().max()))


def test_an_unroll_with_its_own_step_keeps_autograds_adjoint():
    from tdabench.api.unroll import Unroll

    class Custom(Unroll):
        def step(self, state, t, w):
            return super().step(state, t, w * 0.5)

    task = _digits()
    base = task.unroll(task.make_model(5), torch.arange(task.n_train), 5)
    custom = Custom(task.make_model(5), base.data, base.schedule, base.objective, base.optimizer)
    assert Replay(custom, 2).adjoint == "autograd" and Replay(base, 2).adjoint == "closed-form"
    with pytest.raises(ValueError, match="own step"):
        Replay(custom, 2, adjoint="closed-form")
