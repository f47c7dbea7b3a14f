"""TracIn against its limit cases."""
import torch

from conftest import make_context
from tdabench.engine.spec import make_method
from tdabench.tasks.digits import Digits, DigitsConfig
from tdabench.tasks.regression import Regression, RegressionConfig


def test_one_checkpoint_is_lr_times_gradsim_at_that_checkpoint(tmp_path):
    task = Digits(DigitsConfig(n_train=60, n_query=8, epochs=2, lr=0.02))
    tracin = make_method("tracin", task, {"checkpoints": "1"})
    ctx = make_context(task, tmp_path, n_checkpoints=1)
    (ckpt,) = ctx.checkpoints
    assert ckpt.step == task.total_steps(60) and ckpt.lr == 0.02
    gradsim = make_method("gradsim", task, {}).score(ctx)      # the last checkpoint is the reference model
    torch.testing.assert_close(tracin.score(ctx), 0.02 * gradsim, rtol=1e-4, atol=1e-7)


def test_checkpoint_sum_weights_each_checkpoint_by_its_learning_rate(tmp_path):
    task = Regression(RegressionConfig(n_train=30, n_query=4, dim=3, optimizer="gd", steps=40, lr=0.3))
    ctx = make_context(task, tmp_path, n_checkpoints=4)
    assert [c.step for c in ctx.checkpoints] == [10, 20, 30, 40]
    assert all(c.steps_since_previous == 10 for c in ctx.checkpoints)
    lr_only = make_method("tracin", task, {"checkpoints": "4"}).score(ctx)
    by_steps = make_method("tracin", task, {"checkpoints": "4", "weight": "lr_x_steps"}).score(ctx)
    torch.testing.assert_close(by_steps, 10 * lr_only)
    # By hand: the sum over checkpoints of −η ∇ℓ_i·∇φ_j, each at its own parameters.
    expected = torch.zeros_like(lr_only)
    for ckpt in ctx.checkpoints:
        ctx.model.load_state_dict(ckpt.state)
        expected += 0.3 * make_method("gradsim", task, {}).score(ctx)
    torch.testing.assert_close(lr_only, expected, rtol=1e-5, atol=1e-7)
