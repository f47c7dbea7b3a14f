"""The bridge to dattri (``pip install 'tdabench[dattri]'``): a tdabench ``Task`` and ``Context`` as what
dattri's attributors take, and their output in tdabench's score sign.

dattri's attributors read an ``AttributionTask`` (a loss and a target function of ``(params, data)``
in ``torch.func`` style, a model, checkpoints) and unshuffled ``DataLoader``s.  Here:

* the loss is the task's per-example ``loss`` averaged over the rows it is given (one row: the
  example's loss; the whole training set: the mean-loss objective whose Hessian is the IF's), the
  target is the task's ``measurement``; integer items of a batch keep their dtype (LiSSA's sampler
  casts every data item to float);
* the checkpoint is the reference model (or a trajectory checkpoint's state);
* the task's explicit regulariser R enters curvature-based methods as damping when it is an
  isotropic L2 penalty (∇R(w) = c·w, checked at two points): its Hessian is then exactly c·I.  Any
  other R is left out of the curvature, as ``ekfac`` does, and the run record says so;
* dattri's inner-product scores are gᵢᵀ(H + λI)⁻¹∇φⱼ (the gain of including i, on the mean-loss
  scale); tdabench's ``scores[i, j]`` is the change of φⱼ when i is included with weight 1/n, so
  ``to_scores`` returns −raw/n for those and −raw for value-type scores;
* dattri holds every attribution row's per-example gradient at once and solves every batch of queries
  again for each training batch: ``DattriMethod`` passes both in bounded passes, solving each once.

This file is longer than 300 lines: one adapter between two libraries' interfaces (inputs, outputs, sign, memory),
read in one place; the mean loss in pieces it hands dattri is ``toolkit/pieces.py``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tdabench.toolkit.grads import flat_function, num_params, select_params
from tdabench.toolkit.pieces import in_pieces
from tdabench.api.method import Context, Method
from tdabench.api.task import Batch, Task, take

INSTALL_HINT = "pip install 'tdabench[dattri]'"


@contextlib.contextmanager
def session(dtype: torch.dtype, seed: int = 0) -> Iterator[None]:
    """Around every dattri call: its progress bars (tqdm on stderr, which reads TQDM_DISABLE only at
    import), info logs and "not cached" warnings off, since they would flood a sweep's log; and torch's
    default dtype set to ``dtype`` (the model's), since dattri draws some start vectors (Arnoldi's) in the
    default dtype, which a float64 model cannot multiply; and torch's global generator seeded with ``seed``
    (LiSSA samples its minibatches from it) and restored afterwards, so scores repeat and nothing else's
    random stream moves."""
    level, before = logging.getLogger("dattri").level, torch.get_default_dtype()
    logging.getLogger("dattri").setLevel(logging.WARNING)
    torch.set_default_dtype(dtype)
    try:
        # manual_seed reseeds every CUDA generator too: fork them all, so that they are restored as well
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), torch.random.fork_rng(devices=cuda):
            warnings.filterwarnings("ignore", module="dattri")
            torch.manual_seed(seed)
            yield
    finally:
        logging.getLogger("dattri").setLevel(level)
        torch.set_default_dtype(before)


class _Call(nn.Module):
    """``fn(model, batch)`` as a module, so ``functional_call`` swaps the wrapped model's tensors."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Batch], Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *batch: Tensor) -> Tensor:
        return self.fn(self.model, batch)


def dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def param_function(model: nn.Module, fn: Callable[[nn.Module, Batch], Tensor], dtypes: Sequence[torch.dtype],
                   one_row: bool = False) -> Callable[[dict[str, Tensor], Batch], Tensor]:
    """``f(params, data)``: the mean of ``fn`` over the rows of ``data`` at ``params`` (dattri's style);
    parameters not in ``params`` and buffers stay the model's own.  ``one_row``: ``data`` is a single
    example without its batch dimension (DVEmb vmaps over rows that way)."""
    call = _Call(model, fn)

    def f(params: dict[str, Tensor], data: Batch) -> Tensor:
        rows = tuple(x.to(dtype) for x, dtype in zip(data, dtypes))    # undo LiSSA's cast to float
        rows = tuple(x.unsqueeze(0) for x in rows) if one_row else rows
        return functional_call(call, {f"model.{n}": p for n, p in params.items()}, rows, strict=False).mean()

    return f


def attribution_task(ctx: Context, model: nn.Module | None = None, one_row: bool = False,
                     hessian_batch: int = 0) -> Any:
    """A dattri ``AttributionTask`` for ``ctx``: the task's loss and measurement at ``model`` (default: the
    reference), whose state dict is the one checkpoint; ``hessian_batch`` > 0: the loss of more rows than
    that is evaluated and differentiated that many rows at a time (``in_pieces``)."""
    from dattri.task import AttributionTask

    model = model if model is not None else ctx.model
    loss = param_function(model, ctx.task.loss, [x.dtype for x in ctx.train_data], one_row)
    loss = in_pieces(loss, hessian_batch) if hessian_batch else loss
    target = param_function(model, ctx.task.measurement, [x.dtype for x in ctx.query_data], one_row)
    return AttributionTask(loss_func=loss, model=model, target_func=target,
                           checkpoints={k: v.detach().clone() for k, v in model.state_dict().items()})


def loader(data: Batch | Dataset, batch_size: int) -> DataLoader:
    """An unshuffled loader over a batch's rows (dattri refuses shuffled ones; row order is the score's)."""
    dataset = data if isinstance(data, Dataset) else TensorDataset(*data)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def layer_names(model: nn.Module, patterns: Sequence[str]) -> list[str] | None:
    """Parameter names selected by ``patterns`` for dattri's ``layer_name`` (None: every parameter)."""
    if not patterns:
        return None
    return list(select_params(model, patterns))


def l2_coefficient(task: Task, model: nn.Module, patterns: Sequence[str] = ()) -> float | None:
    """c when the task's regulariser is (c/2)·‖w‖² on the selected parameters (∇R = c·w at the model and at a
    random point), 0.0 when it has no gradient there, None when it is anything else."""
    params = select_params(model, patterns)
    f, w = flat_function(model, params, task.regularizer)
    w = w.detach().double()
    probe = torch.randn(w.shape, generator=torch.Generator().manual_seed(0), dtype=w.dtype).to(w.device)
    coefficients = []
    for point in (w, probe):
        g = torch.func.grad(lambda v: f(v.to(next(iter(params.values())).dtype)).double())(point)
        if not torch.isfinite(g).all():
            return None
        if g.abs().max() == 0:
            coefficients.append(0.0)
            continue
        c = float(g @ point / (point @ point))
        if not torch.allclose(g, c * point, rtol=1e-5, atol=1e-9 * float(g.abs().max())):
            return None
        coefficients.append(c)
    return coefficients[0] if abs(coefficients[0] - coefficients[1]) <= 1e-6 * max(abs(coefficients[1]), 1e-12) else None


def curvature_damping(ctx: Context, damping: float, patterns: Sequence[str] = ()) -> tuple[float, dict[str, Any]]:
    """λ + c (the regulariser's curvature, when it is an isotropic L2) and what the run record should say."""
    c = l2_coefficient(ctx.task, ctx.model, patterns)
    if c is None:
        return damping, {"regularizer_curvature": "not an isotropic L2 penalty: left out of the curvature"}
    return damping + c, {"regularizer_curvature": c, "damping_total": damping + c}


def to_scores(raw: Tensor, n_train: int, *, influence: bool = True) -> Tensor:
    """dattri's ``[n_train, n_query]`` gains → tdabench scores: −raw/n (influence scale) or −raw (values)."""
    if not torch.isfinite(raw).all():
        bad = int((~torch.isfinite(raw)).sum())
        raise FloatingPointError(f"dattri returned {bad} non-finite scores of {raw.numel()}: "
                                 "raise the damping or lower the step size of the solver")
    out = -raw.detach().double() / (n_train if influence else 1)
    return out.float().cpu()


#: Per-example gradients a pass holds at most when its size is left at 0: 8 GiB (CIFAR-10's ResNet-9 at full
#: width, 1.97 M float32 parameters: 1,090 rows; the MNIST MLP, 165,632: all 5,000 at once).
GRADIENT_BYTES = 2**33


class DattriMethod(Method):
    """A method computed by one dattri attributor: ``attributor(ctx)`` builds it, ``fit`` caches the
    query-independent part on the whole attribution set (one batch: dattri's explicit and CG solvers sum
    one inverse-HVP per batch of their "full" loader), ``score`` attributes every query and converts.  A
    config with ``train_batch`` (and ``query_batch``) is scored in passes of that many attribution rows (and
    queries); 0 means as many as keep their per-example gradients within ``GRADIENT_BYTES``: every row at
    once on a small model, so one call, as dattri alone (``score_in_passes``)."""

    requires = ("dattri",)
    install_hint = INSTALL_HINT
    #: True: dattri returns gᵢᵀ(H+λI)⁻¹∇φⱼ on the mean-loss scale (score −raw/n); False: a value (−raw).
    influence_scale: ClassVar[bool] = True

    def attributor(self, ctx: Context) -> Any:
        """The configured dattri attributor for ``ctx`` (``cache`` not yet called)."""
        raise NotImplementedError(f"{type(self).__name__} must implement attributor()")

    def dtype(self, ctx: Context) -> torch.dtype:
        """The default dtype the attributor runs under (``session``): the model's."""
        return dtype_of(ctx.model)

    def fit_data(self, ctx: Context) -> Any:
        """What ``cache`` is given: the whole attribution set as one batch."""
        return loader(ctx.train_data, ctx.n_train)

    def score_data(self, ctx: Context) -> tuple[Any, Any]:
        """The (training, query) loaders ``attribute`` is given when the attribution set is one batch."""
        return loader(ctx.train_data, ctx.n_train), loader(ctx.query_data, self.pass_rows(ctx, "query_batch", ctx.n_query))

    def pass_rows(self, ctx: Context, setting: str, n: int) -> int:
        """Rows per pass: the config's ``setting``, or for 0 (or no such setting) as many as keep their
        per-example gradients within ``GRADIENT_BYTES`` — all ``n`` when they fit."""
        value = getattr(self.config, setting, 0)
        if value:
            return min(value, n)
        params = select_params(ctx.model, getattr(self.config, "patterns", ()))
        size = num_params(params) * next(iter(params.values())).element_size()       # one row's gradient, bytes
        return min(n, max(1, GRADIENT_BYTES // size))

    def fit(self, ctx: Context) -> None:
        self._info: dict[str, Any] = {}
        with session(self.dtype(ctx), ctx.seed):
            self._attributor = self.attributor(ctx)
            self._attributor.cache(self.fit_data(ctx))
        self._fitted = ctx.model_key or id(ctx.model)

    def fitted(self, ctx: Context) -> None:
        """``fit`` unless it already ran on this context's model (the runner calls it; a direct caller may not)."""
        if getattr(self, "_fitted", None) != (ctx.model_key or id(ctx.model)):
            self.fit(ctx)

    def score(self, ctx: Context) -> Tensor:
        self.fitted(ctx)
        rows = self.pass_rows(ctx, "train_batch", ctx.n_train) if hasattr(self.config, "train_batch") else ctx.n_train
        with session(self.dtype(ctx), ctx.seed):
            if rows < ctx.n_train:
                self._info["train_rows_per_pass"] = rows
                raw = self.score_in_passes(ctx, rows)
            else:
                raw = self._attributor.attribute(*self.score_data(ctx))
        return to_scores(raw, ctx.n_train, influence=self.influence_scale)     # shape: [n_train, n_query]

    def score_in_passes(self, ctx: Context, rows: int) -> Tensor:
        """The raw scores with the attribution set's per-example gradients ``rows`` at a time.  dattri
        recomputes and transforms a batch of queries again for every training batch (CG's solve, LiSSA's
        recursion, each time): here the queries go in passes of ``query_batch`` (``pass_rows``), each computed and
        transformed once (in the order, so with the random draws, of one call) while every training batch
        goes by — the one-call scores, with rows × d gradients held instead of n × d."""
        size = self.pass_rows(ctx, "query_batch", ctx.n_query)
        training = loader(ctx.train_data, rows)
        columns = []
        for idx in torch.arange(ctx.n_query).split(size):
            with once_per_pass(self._attributor, "generate_test_rep", "transform_test_rep"):
                columns.append(self._attributor.attribute(training, loader(take(ctx.query_data, idx), size)))
        return torch.cat(columns, dim=1)                                # shape: [n_train, n_query]

    def extras(self) -> dict[str, Any]:
        return dict(getattr(self, "_info", {}))


@contextlib.contextmanager
def once_per_pass(attributor: Any, *names: str) -> Iterator[None]:
    """Within the block, each named method of ``attributor`` runs once per checkpoint and is answered from
    that first result afterwards (the block's query loader must hold one batch)."""
    def remember(original: Callable[..., Any]) -> Callable[..., Any]:
        memo: dict[Any, Any] = {}

        def once(*args: Any, **kwargs: Any) -> Any:
            key = kwargs.get("ckpt_idx", args[0] if args else None)
            if key not in memo:
                memo[key] = original(*args, **kwargs)
            return memo[key]
        return once

    for name in names:
        setattr(attributor, name, remember(getattr(attributor, name)))
    try:
        yield
    finally:
        for name in names:
            delattr(attributor, name)


class _Rows(Dataset):
    """A batch's rows as dicts ``{"item0": ..., "item1": ...}``: dattri's block-projected attributors call
    ``model(**row)`` for dict batches, which lets the wrapper below see every item of a task's batch."""

    def __init__(self, data: Batch) -> None:
        self.data = data

    def __len__(self) -> int:
        return int(self.data[0].shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {f"item{k}": x[i] for k, x in enumerate(self.data)}


class Measured(nn.Module):
    """The task's model behind the interface dattri's LoGra/FactGraSS expect: ``forward(**row)`` returns an
    object whose ``.loss`` is the sum of the task's measurement over the rows (sums, not means, so that the
    hooks' per-row gradients do not depend on the batch size); ``training_loss`` is the same for ``loss``.
    They accumulate in float32, so a float64 model runs as a float32 copy (floating-point data cast too)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = copy.deepcopy(model).float(), task

    def unpack(self, row: dict[str, Tensor]) -> Batch:
        items = (row[f"item{k}"] for k in range(len(row)))
        return tuple(x.float() if x.is_floating_point() else x for x in items)

    def forward(self, **row: Tensor) -> Any:
        return _Loss(self.task.measurement(self.model, self.unpack(row)).sum())

    def training_loss(self, row: dict[str, Tensor], device: str) -> Tensor:
        return self.task.loss(self.model, self.unpack({k: v.to(device) for k, v in row.items()})).sum()


class _Loss:
    def __init__(self, loss: Tensor) -> None:
        self.loss = loss


def rows(data: Batch, batch_size: int) -> DataLoader:
    """An unshuffled loader of dict rows (see ``Measured``)."""
    return loader(_Rows(data), batch_size)


def measured_task(ctx: Context) -> tuple[Any, "Measured"]:
    """A dattri ``AttributionTask`` around ``Measured(ctx.model)``, and the wrapper."""
    from dattri.task import AttributionTask

    wrapper = Measured(ctx.model, ctx.task)
    task = AttributionTask(loss_func=lambda model, row, device: model.training_loss(row, device), model=wrapper,
                           checkpoints={k: v.detach().clone() for k, v in wrapper.state_dict().items()})
    return task, wrapper


def linear_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``Measured(model)`` whose name matches a pattern (all when empty)."""
    import re

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and (not patterns or any(re.search(p, n) for p in patterns))]
    if not names:
        raise ValueError(f"no nn.Linear module matches {list(patterns)}; the model's Linear modules are: "
                         + ", ".join(n for n, m in model.named_modules() if isinstance(m, nn.Linear)))
    return [f"model.{n}" if n else "model" for n in names]


def class_labels(task: Task, data: Batch, method: str) -> Tensor:
    """The class labels of a classification task's batch: its last item, one integral value per row; a
    ValueError saying why not otherwise (KNN-Shapley and RPS are defined for classifiers only)."""
    y = data[-1]
    if y.dim() != 1 or (y.is_floating_point() and not bool((y == y.round()).all())):
        raise ValueError(f"{method} needs a classification task whose batches end with one class label per row; "
                         f"task {task.name}'s last item has shape {list(y.shape)} and dtype {y.dtype}")
    return y.long()
