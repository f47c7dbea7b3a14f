"""The closed-form dynamics of the two-layer linear network (002 C.6) against finite differences of
itself, against gradient descent as the hierarchy task runs it, and in the limit of unrelated items."""
import torch

from tdabench.toolkit.deeplinear import DeepLinear
from tdabench.studies.stagewise import closed_form_curves, pair_correlations
from tdabench.tasks.hierarchy import Hierarchy, HierarchyConfig
from tdabench.tasks.regression import Regression

STEPS = (100, 150, 200, 250, 300, 400)


def test_the_derivative_equals_central_differences_of_the_closed_form_through_degenerate_modes():
    task = Hierarchy()
    model, t = task.deep_linear(), task.train_data()[1].T
    values = torch.linalg.svdvals(t)
    assert (values[:-1] - values[1:]).abs().min() < 1e-9                       # the tree's modes coincide
    h = 1e-6
    for step in (50, 200, 500):
        for i in (0, 5):
            dt = torch.zeros_like(t)
            dt[:, i] = t[:, i]
            fd = (model.map(t + h * dt, step) - model.map(t - h * dt, step)) / (2 * h)
            torch.testing.assert_close(model.map_derivative(t, dt, step), fd, atol=1e-7, rtol=1e-6)


def _gd_losses(task: Hierarchy, targets: torch.Tensor) -> torch.Tensor:
    """Per-item losses ``[C, N]`` (against the true targets) at STEPS of the task's own full-batch GD from
    its seed-0 initialisation, trained towards ``targets``."""
    x, y = task.train_data()
    model, out = task.make_model(0), []
    opt = torch.optim.SGD(model.parameters(), lr=task.config.lr)
    for step in range(1, max(STEPS) + 1):
        opt.zero_grad()
        (0.5 * ((model(x) - targets) ** 2).sum() / task.n_train).backward()
        opt.step()
        if step in STEPS:
            with torch.no_grad():
                out.append(0.5 * ((model(x) - y) ** 2).sum(1))
    return torch.stack(out)


def test_the_closed_form_follows_the_task_s_gradient_descent():
    """The map's losses along training against the task's own training run (random, unaligned small
    initialisation): within 3% of the initial loss at every checkpoint, through every stage."""
    task = Hierarchy()
    measured = []
    task.train(task.make_model(0), torch.arange(task.n_train), 0,
               lambda step, m, lr: measured.append(task.measure(m, task.query_data()).double()), STEPS)
    x, y = task.query_data()
    model = task.deep_linear()
    closed = torch.stack([0.5 * ((x @ model.map(y.T, s).T - y) ** 2).sum(1) for s in STEPS])
    initial = 0.5 * (y**2).sum(1).max()
    assert (torch.stack(measured) - closed).abs().max() < 0.03 * initial
    assert measured[0].mean() > 0.4 * initial and measured[-1].mean() < 0.1 * initial   # the stages happen in between


def test_the_analytical_influence_matches_finite_differences_of_the_training_dynamics():
    """dℓ_j/dε when item i's target is scaled by 1 + ε (002 eq. 36), from gradient descent itself by
    central differences, against the closed form's derivative, at six points of training."""
    task = Hierarchy()
    x, y = task.train_data()
    h, fd = 1e-4, []
    for i in range(task.n_train):
        up, down = y.clone(), y.clone()
        up[i] *= 1 + h
        down[i] *= 1 - h
        fd.append((_gd_losses(task, up) - _gd_losses(task, down)) / (2 * h))
    fd = torch.stack(fd, 1)                                                       # shape: [C, N, Q]
    model = task.deep_linear()
    analytic = torch.stack([model.influence(s, (x, y)) for s in STEPS])
    assert torch.corrcoef(torch.stack([fd.flatten(), analytic.flatten()]))[0, 1] > 0.99
    assert (fd - analytic).norm() / fd.norm() < 0.15                             # measured: 0.08


def test_unrelated_items_have_no_influence_on_each_other():
    """Orthogonal targets (every item its own features): leaving one out, or upweighting it, changes no
    other item's loss at any time; an item's effect on itself is negative (it helps)."""
    model = DeepLinear(torch.eye(4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 4.0]).double()[:, None],
                       lr=0.1, a0=1e-5)
    queries = (torch.eye(4, dtype=torch.float64), model.targets)
    off = ~torch.eye(4, dtype=torch.bool)
    for step in (50, 150, 400):
        for scores in (model.influence(step, queries), model.loo(step, queries)):
            assert scores[off].abs().max() < 1e-12
            assert (scores.diagonal() <= 1e-15).all() and scores.diagonal().min() < 0   # 0 once a mode is learned


def test_stagewise_adds_the_closed_form_only_where_the_task_has_one():
    """On hierarchy the first-order influence follows the exact leave-one-out effect over training
    (between different items; an item's effect on itself at convergence is beyond first order)."""
    task = Hierarchy()
    steps = list(range(60, 601, 60))
    curves = closed_form_curves(task, steps, torch.arange(task.n_train))
    assert set(curves) == {"analytic-if", "analytic-loo"} and curves["analytic-if"].shape == (10, 8, 8)
    others = ~torch.eye(8, dtype=torch.bool)
    assert pair_correlations(curves["analytic-if"], curves["analytic-loo"])[others].median() > 0.8   # measured: 0.97
    assert closed_form_curves(Regression(), [1, 2], torch.tensor([0])) == {}
