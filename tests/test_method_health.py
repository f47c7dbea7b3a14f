"""Method health: configs reject bad settings when built (naming ``method.field`` and a fix that
works), methods import no pipeline module, and ``if`` handles an indefinite Hessian by policy
(raise the damping, recorded and warned, or refuse) while leaving a convex problem untouched."""
from __future__ import annotations

import ast
import logging
import math
import re
import typing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tdabench.api.config import ConfigError, apply_overrides
from tdabench.api.method import Context, Method
from tdabench.api.registry import METHODS
from tdabench.api.task import Batch, Task, TaskConfig, take
from tdabench.tasks.regression import Regression, RegressionConfig

METHODS_DIR = Path(__file__).resolve().parents[1] / "methods"
NAN = float("nan")

# ----- configs --------------------------------------------------------------------------------

#: (method, field, bad value): at least one per kind of check of every config.
BAD = [
    ("magic", "branching", 1), ("magic", "branching", -1), ("magic", "query_batch", -1), ("magic", "tolerance", 0.0),
    ("bif", "chains", 0), ("bif", "draws", 0), ("bif", "thin", 0), ("bif", "batch_size", 0),
    ("bif", "record_batch_size", 0), ("bif", "burn_in", -1), ("bif", "epsilon", 0.0), ("bif", "nbeta", -1.0),
    ("bif", "gamma", -0.1), ("bif", "noise", -0.5), ("bif", "rms_alpha", 1.0), ("bif", "rms_delta", 0.0),
    ("bif", "diverge_factor", 1.0), ("bif", "chains", 2.5), ("bif", "epsilon", math.inf),
    ("bif", "sampler", "adam"), ("bif", "patterns", ("(",)),
    ("gradsim", "proj_dim", -1), ("gradsim", "batch_size", 0), ("gradsim", "proj_dim", True),
    ("gradsim", "patterns", ("[",)), ("gradsim", "patterns", "fc"),
    ("tracin", "checkpoints", 0), ("tracin", "proj_dim", -4), ("tracin", "batch_size", 0), ("tracin", "spacing", "lin"),
    ("source", "segments", 0), ("source", "checkpoints_per_segment", 0), ("source", "damping", -1.0),
    ("source", "cpu_max_width", -1), ("source", "max_examples", 0), ("source", "batch_size", 0),
    ("source", "strategy", "diagonal"),
    ("if", "damping", -1e-3), ("if", "damping", math.inf), ("if", "max_params", 0), ("if", "batch_size", 0),
    ("if", "curvature", "fisher"), ("if", "indefinite", "ignore"),
    ("ekfac", "damping", -1.0), ("ekfac", "cpu_max_width", -1), ("ekfac", "max_examples", 0),
    ("ekfac", "batch_size", 0), ("ekfac", "query_batch_size", 0), ("ekfac", "strategy", "lowrank"),
    ("trak", "proj_dim", 0), ("trak", "models", 0), ("trak", "checkpoints", 0), ("trak", "subset_fraction", 0.0),
    ("trak", "subset_fraction", 1.5), ("trak", "damping", -0.1), ("trak", "batch_size", 0),
    ("trak", "projector_memory_mb", -1),
    ("random", "salt", 1.5), ("random", "salt", "7"),
    ("repsim", "batch_size", 0), ("repsim", "module", 3),
    ("trackstar", "proj_dim", -1), ("trackstar", "eps", 0.0), ("trackstar", "batch_size", 0), ("trackstar", "patterns", ("[",)),
    ("cg", "damping", -1.0), ("cg", "max_iter", 0), ("cg", "patterns", ("(",)), ("cg", "query_batch", -1),
    ("lissa", "scaling", 0.0), ("lissa", "depth", 0), ("lissa", "repeats", 0), ("lissa", "hessian_batch", 0),
    ("lissa", "damping", math.nan),
    ("arnoldi", "proj_dim", 0), ("arnoldi", "max_iter", 1), ("arnoldi", "damping", -1e-3),
    ("datainf", "damping", 0.0), ("datainf", "fit_fraction", 0.0), ("datainf", "fit_fraction", 1.5),
    ("logra", "proj_dim", 10), ("logra", "proj_dim", 0), ("logra", "hessian", "kfac"), ("logra", "damping", 0.0),
    ("logra", "batch_size", 0),
    ("factgrass", "proj_dim", 0), ("factgrass", "blowup", 3), ("factgrass", "damping", -1.0), ("factgrass", "batch_size", 0),
    ("rps", "l2", 0.0), ("rps", "epochs", 0),
    ("knn_shapley", "k", 0), ("knn_shapley", "features", "pixels"), ("knn_shapley", "batch_size", 0),
    ("dvemb", "proj_dim", -1), ("dvemb", "max_gigabytes", 0.0), ("dvemb", "tolerance", 0.0),
]

#: Edge values that are valid and must stay accepted.
GOOD = [
    ("bif", {"noise": 0.0, "gamma": 0.0, "burn_in": 0, "diverge_factor": math.inf, "rms_alpha": 0.0}),
    ("gradsim", {"proj_dim": 0}), ("tracin", {"proj_dim": 0, "checkpoints": 1}),
    ("source", {"damping": 0.0, "cpu_max_width": 0, "max_examples": None}),
    ("if", {"damping": 0.0, "indefinite": "refuse"}), ("ekfac", {"damping": None, "cpu_max_width": 0}),
    ("trak", {"subset_fraction": 1.0, "damping": 0.0, "projector_memory_mb": 0}), ("random", {"salt": -3}),
]


def _numeric_fields() -> list[tuple[str, str]]:
    """(method, field) for every int/float (or Optional of one) field of every method config."""
    out = []
    for name in METHODS.names():
        cls = METHODS.get(name).Config
        for field, tp in typing.get_type_hints(cls).items():
            args = set(typing.get_args(tp)) - {type(None)} or {tp}
            if args <= {int, float}:
                out.append((name, field))
    return out


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_is_covered_and_its_defaults_are_valid(name):
    METHODS.get(name).Config()                     # defaults must pass their own checks
    assert name in {m for m, _, _ in BAD}, f"add bad values for {name} to BAD"


@pytest.mark.parametrize("name, field, bad", BAD, ids=[f"{m}.{f}={v!r}" for m, f, v in BAD])
def test_a_bad_value_fails_when_the_config_is_built(name, field, bad):
    cls = METHODS.get(name).Config
    with pytest.raises(ConfigError) as err:
        cls(**{field: bad})
    message = str(err.value)
    assert f"{name}.{field}" in message
    # The message ends in a fix; applying it to the defaults must give a config that builds.
    fix = re.search(rf"--set {re.escape(name)}\.(\w+)=(\S*)$", message)
    assert fix is not None, f"no `--set {name}.FIELD=VALUE` fix at the end of: {message}"
    apply_overrides(cls(), {fix.group(1): fix.group(2)}, name)


@pytest.mark.parametrize("name, field", _numeric_fields())
def test_every_numeric_field_rejects_nan(name, field):
    """NaN compares false with every bound: a check written as ``x < low`` would let it through."""
    with pytest.raises(ConfigError, match=re.escape(f"{name}.{field}=")):
        METHODS.get(name).Config(**{field: NAN})


def test_numeric_fields_are_found():
    assert ("bif", "epsilon") in _numeric_fields() and ("ekfac", "damping") in _numeric_fields()


@pytest.mark.parametrize("name, values", GOOD, ids=[m for m, _ in GOOD])
def test_valid_edge_values_are_accepted(name, values):
    config = METHODS.get(name).Config(**values)
    assert all(getattr(config, k) == v for k, v in values.items())


def test_the_count_cross_check_of_bif():
    with pytest.raises(ConfigError, match="bif.draws=1"):
        METHODS.get("bif").Config(chains=1, draws=1)
    METHODS.get("bif").Config(chains=2, draws=1)   # two draws in all: a covariance exists


def test_overrides_from_the_command_line_are_checked_too():
    cls = METHODS.get("trak").Config
    with pytest.raises(ConfigError, match=r"trak\.subset_fraction=2\.0: must be in \(0, 1\]"):
        apply_overrides(cls(), {"subset_fraction": "2"}, "trak")


# ----- imports --------------------------------------------------------------------------------

PIPELINE = ("tdabench.engine.groundtruth", "tdabench.engine.reference", "tdabench.runner", "tdabench.engine.pipeline")


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}    # from tdabench import runner
    return found


@pytest.mark.parametrize("path", sorted(METHODS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_methods_import_no_pipeline_module(path):
    bad = {m for m in _imported_modules(path) if any(m == p or m.startswith(p + ".") for p in PIPELINE)}
    assert not bad, f"{path.name} imports the pipeline ({sorted(bad)}); use tdabench.api.seeds / tdabench.toolkit.checkpoints"


# ----- if: numerical health -------------------------------------------------------------------


@dataclass(frozen=True)
class TanhConfig(TaskConfig):
    n_train: int = 40          # attribution examples
    n_query: int = 8           # query examples
    dim: int = 3               # inputs
    hidden: int = 16           # tanh units: (dim + 2)·hidden + 1 parameters
    steps: int = 25            # full-batch GD steps: stopped early, far from a minimum
    lr: float = 0.3            # GD step size


class TanhRegression(Task):
    """A one-hidden-layer tanh network on a nonlinear target, trained briefly: its training
    objective is non-convex and, away from a minimum, its Hessian is indefinite."""

    name = "tanh_regression_test"
    version = "1"
    Config = TanhConfig

    @cached_property
    def _data(self) -> tuple[Batch, Batch]:
        c = self.config
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(c.n_train + c.n_query, c.dim, generator=gen, dtype=torch.float64)
        y = torch.sin(2 * x[:, 0]) * x[:, 1] + 0.1 * torch.randn(x.shape[0], generator=gen, dtype=torch.float64)
        return (x[: c.n_train], y[: c.n_train]), (x[c.n_train :], y[c.n_train :])

    def train_data(self) -> Batch:
        return self._data[0]

    def query_data(self) -> Batch:
        return self._data[1]

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        c = self.config
        return nn.Sequential(nn.Linear(c.dim, c.hidden), nn.Tanh(), nn.Linear(c.hidden, 1)).double()

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return 0.5 * (model(batch[0]).squeeze(-1) - batch[1]) ** 2

    def total_steps(self, n_examples: int) -> int:
        return self.config.steps

    def train(self, model: nn.Module, indices: Tensor, seed: int, on_checkpoint: Any = None,
              checkpoint_steps: tuple[int, ...] = ()) -> nn.Module:
        opt = torch.optim.SGD(model.parameters(), lr=self.config.lr)
        data = take(self.train_data(), indices)
        for _ in range(self.config.steps):
            opt.zero_grad()
            self.loss(model, data).mean().backward()
            opt.step()
        return model


def _context(task: Task, tmp_path: Path) -> Context:
    """The reference model trained on the whole attribution set, in a Context built by hand."""
    model = task.train(task.make_model(0), torch.arange(task.n_train), seed=0).eval()
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=torch.device("cpu"), seed=0, cache_dir=tmp_path)


def _flat_problem(task: Task, model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """Independently of tdabench's curvature code: the Hessian of the mean training loss +
    regulariser ``[d, d]`` and the per-example gradients of the loss ``[n_train, d]`` and of the
    measurement ``[n_query, d]``, through torch.autograd.functional on a flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def at(w: Tensor) -> nn.Module:
        return _Bound(model, _unflatten(w, names, shapes))

    def objective(w: Tensor) -> Tensor:
        return task.loss(at(w), task.train_data()).mean() + task.regularizer(at(w))

    def per_example(fn: Any, data: Batch) -> Tensor:
        return torch.stack([torch.autograd.functional.jacobian(lambda w: fn(at(w), take(data, torch.tensor([i]))).sum(),
                                                               flat) for i in range(data[0].shape[0])])

    hess = torch.autograd.functional.hessian(objective, flat).double()
    return hess, per_example(task.loss, task.train_data()).double(), per_example(task.measurement, task.query_data()).double()


def _unflatten(w: Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, Tensor]:
    return dict(zip(names, (t.reshape(s) for t, s in zip(torch.split(w, [s.numel() for s in shapes]), shapes))))


class _Bound(nn.Module):
    """``model`` evaluated with ``tensors`` as its parameters (a stand-in module for task.loss)."""

    def __init__(self, model: nn.Module, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self.inner, self.tensors = [model], tensors     # a list: not registered as a submodule

    def forward(self, *args: Tensor) -> Tensor:
        return torch.func.functional_call(self.inner[0], self.tensors, args)

    def parameters(self, recurse: bool = True) -> Any:  # the regulariser sums over these
        return iter(self.tensors.values())


def _run_if(ctx: Context, caplog: pytest.LogCaptureFixture, **settings: Any) -> tuple[Tensor, dict[str, Any]]:
    """``if`` with ``settings``; the Hessian unless they say otherwise (the policy tested here is the Hessian's)."""
    settings = {"curvature": "hessian", **settings}
    method: Method = METHODS.get("if")(METHODS.get("if").Config(**settings))
    with caplog.at_level(logging.WARNING, logger="tdabench"):
        scores = method.score(ctx)
    return scores, method.extras()


@pytest.fixture(scope="module")
def tanh_problem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Context, Tensor, Tensor, Tensor]:
    task = TanhRegression()
    ctx = _context(task, tmp_path_factory.mktemp("tanh"))
    return (ctx, *_flat_problem(task, ctx.model))


def test_the_tanh_task_has_an_indefinite_hessian(tanh_problem):
    _, hess, _, _ = tanh_problem
    eig = torch.linalg.eigvalsh(hess)
    assert eig[0] < -1e-4 * eig.abs().max(), f"the test task must be non-convex here: λ_min = {eig[0]:.3g}"


def test_if_raises_the_damping_on_an_indefinite_hessian(tanh_problem, caplog):
    ctx, hess, g_train, g_query = tanh_problem
    lam = 1e-6
    caplog.clear()
    scores, extras = _run_if(ctx, caplog, damping=lam, indefinite="raise")
    true_min = float(torch.linalg.eigvalsh(hess)[0])
    assert torch.isfinite(scores).all()
    assert extras["damping_raised"] is True and extras["damping_requested"] == lam
    assert extras["damping_used"] > lam
    assert extras["min_eigenvalue"] == pytest.approx(true_min, rel=1e-6)
    assert 1e-8 * extras["max_abs_eigenvalue"] < lam      # the floor is below λ: the shift targets λ itself
    damped = hess + extras["damping_used"] * torch.eye(hess.shape[0], dtype=hess.dtype)
    assert float(torch.linalg.eigvalsh(damped)[0]) == pytest.approx(lam, rel=1e-3)
    assert extras["min_eigenvalue_damped"] == pytest.approx(lam, rel=1e-3)
    warnings = [r for r in caplog.records if r.name == "tdabench" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert f"{true_min:.4g}" in text and f"{extras['damping_used']:.6g}" in text
    # The scores are the IF at the damping used (closed form from the independent Hessian).
    expected = -(g_train @ torch.linalg.solve(damped, g_query.T)) / ctx.n_train
    torch.testing.assert_close(scores.double(), expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))


def test_if_refuses_an_indefinite_hessian_when_told_and_names_a_damping_that_works(tanh_problem, caplog):
    ctx, hess, _, _ = tanh_problem
    with pytest.raises(FloatingPointError, match=r"if\.damping") as err:
        _run_if(ctx, caplog, damping=1e-6, indefinite="refuse")
    message = str(err.value)
    true_min = float(torch.linalg.eigvalsh(hess)[0])
    assert f"{true_min:.4g}" in message
    suggested = float(re.search(r"--set if\.damping=(\S+)", message).group(1))
    assert suggested + true_min > 0                       # the suggestion makes H + λI positive definite
    scores, extras = _run_if(ctx, caplog, damping=suggested, indefinite="refuse")
    assert torch.isfinite(scores).all() and extras["damping_raised"] is False


def test_if_with_huge_damping_is_the_scaled_gradient_dot_product(tanh_problem, caplog):
    """λ → ∞: (H + λI)⁻¹ → I/λ, so score → −(1/n)·g_train·g_query / λ, even where H is indefinite."""
    ctx, _, g_train, g_query = tanh_problem
    lam = 1e6
    scores, extras = _run_if(ctx, caplog, damping=lam, indefinite="refuse")
    assert extras["damping_used"] == lam and extras["damping_raised"] is False
    limit = -(g_train @ g_query.T) / ctx.n_train / lam
    torch.testing.assert_close(scores.double(), limit, rtol=1e-4, atol=1e-6 * float(limit.abs().max()))


def test_if_defaults_to_gauss_newton_damped_by_a_hundredth_of_its_largest_eigenvalue(tmp_path, caplog):
    """Logistic regression: the model is linear in its parameters, so the Gauss-Newton matrix is the
    Hessian, which ``_flat_problem`` builds independently; the default λ is 0.01 × its largest eigenvalue."""
    task = Regression(RegressionConfig(n_train=40, n_query=8, dim=4))
    ctx = _context(task, tmp_path)
    hess, g_train, g_query = _flat_problem(task, ctx.model)
    method: Method = METHODS.get("if")()
    scores, extras = method.score(ctx), method.extras()
    top = float(torch.linalg.eigvalsh(hess)[-1])
    assert extras["curvature"] == "gauss_newton" and "largest" in extras["damping_rule"]
    assert extras["damping_used"] == pytest.approx(0.01 * top, rel=1e-6) and not extras["damping_raised"]
    damped = hess + extras["damping_used"] * torch.eye(hess.shape[0], dtype=hess.dtype)
    expected = -(g_train @ torch.linalg.solve(damped, g_query.T)) / ctx.n_train
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_if_falls_back_to_the_hessian_where_the_task_has_no_outputs_and_says_so(tanh_problem, caplog):
    ctx, hess, _, _ = tanh_problem
    assert not ctx.task.has_outputs
    method: Method = METHODS.get("if")()
    with caplog.at_level(logging.WARNING, logger="tdabench"):
        scores = method.score(ctx)
    extras = method.extras()
    eig = torch.linalg.eigvalsh(hess)
    assert torch.isfinite(scores).all() and extras["curvature"] == "hessian" and "outputs" in extras["curvature_fallback"]
    requested = 0.01 * float(eig.abs().max())
    assert extras["damping_requested"] == pytest.approx(requested, rel=1e-6)
    assert extras["damping_raised"] == bool(eig[0] + requested <= 1e-8 * eig.abs().max())
    assert float(eig[0]) + extras["damping_used"] == pytest.approx(extras["min_eigenvalue_damped"], rel=1e-9)
    assert extras["min_eigenvalue_damped"] > 0


@pytest.mark.parametrize("damping", [0.0, 1e-3])
def test_if_leaves_a_convex_problem_alone(tmp_path, caplog, damping):
    task = Regression(RegressionConfig(n_train=40, n_query=8, dim=4))
    ctx = _context(task, tmp_path)
    hess, _, _ = _flat_problem(task, ctx.model)
    caplog.clear()
    raised, extras = _run_if(ctx, caplog, damping=damping, indefinite="raise")
    refused, _ = _run_if(ctx, caplog, damping=damping, indefinite="refuse")   # nothing to refuse
    assert extras["damping_used"] == extras["damping_requested"] == damping
    assert extras["damping_raised"] is False
    assert extras["min_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(hess)[0]), rel=1e-6)
    assert extras["min_eigenvalue"] >= task.config.l2 * (1 - 1e-9)   # the ridge bounds it from below
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    torch.testing.assert_close(raised, refused)


# ----- trak / ekfac: the damping as used ------------------------------------------------------


def _fit_score(name: str, ctx: Context, **settings: Any) -> tuple[Tensor, dict[str, Any]]:
    cls = METHODS.get(name)
    if cls.missing_requirements():
        pytest.skip(f"{name} needs {cls.missing_requirements()}")
    method = cls(cls.Config(**settings))
    method.fit(ctx)
    return method.score(ctx).double(), method.extras()


def test_trak_records_the_damping_its_heuristic_resolved_to(tmp_path):
    """Rerunning with the recorded λ as an explicit damping must reproduce the heuristic's scores."""
    task = Regression(RegressionConfig(n_train=40, n_query=6, dim=4))
    ctx = _context(task, tmp_path)
    auto, extras = _fit_score("trak", ctx, models=1, proj_dim=64)
    assert isinstance(extras["damping"], str) and len(extras["damping_used"]) == len(extras["lambda_reg"]) == 1
    lam = extras["damping_used"][0]
    d = sum(p.numel() for p in ctx.model.parameters())
    assert lam > 0 and extras["lambda_reg"][0] == pytest.approx(lam * ctx.n_train / d)
    explicit, again = _fit_score("trak", ctx, models=1, proj_dim=64, damping=lam)
    assert again["damping"] == lam and again["damping_used"] == pytest.approx([lam])
    torch.testing.assert_close(explicit, auto, rtol=1e-6, atol=1e-9 * float(auto.abs().max()))


def test_ekfac_records_the_damping_its_heuristic_resolved_to(tmp_path):
    task = Regression(RegressionConfig(n_train=40, n_query=6, dim=4))
    ctx = _context(task, tmp_path)
    auto, extras = _fit_score("ekfac", ctx)
    assert extras["damping"] == "kronfluence heuristic (0.1 × mean eigenvalue)" and extras["damping_applied"]
    (lam,) = extras["damping_used"].values()           # one tracked module: the model itself
    assert lam > 0
    explicit, again = _fit_score("ekfac", ctx, damping=lam)
    assert again["damping"] == lam and "damping_used" not in again
    torch.testing.assert_close(explicit, auto, rtol=1e-5, atol=1e-9 * float(auto.abs().max()))
    _, identity = _fit_score("ekfac", ctx, strategy="identity")
    assert identity["damping_applied"] is False
