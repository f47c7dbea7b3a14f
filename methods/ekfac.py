"""ekfac: the classical influence function with kronfluence's Kronecker-factored curvature
(Grosse et al. 2023; 001 Sections 3.3, A.3, B.3): EK-FAC (default), K-FAC, diagonal or identity.

kronfluence's pairwise score is ∇φ_jᵀ (G + λI)⁻¹ ∇ℓ_i, with G its block-diagonal Gauss-Newton
(Fisher) approximation of the *mean* training loss over the tracked Linear/Conv2d layers.  In
tdabench's sign (change of φ_j when example i is included with weight 1/n) that is
score[i, j] = −(1/n)·kronfluence[j, i], on the same scale as the ``if`` method.  The task's
explicit regulariser is not part of G: pass it through ``damping`` where it matters (``l2`` on
``regression``).

Factors are query-independent: ``fit`` computes them on ``task.fit_data()`` (or the attribution
set) and kronfluence stores them under the method's cache directory keyed by the reference model
and the factor settings, so a second run on the same model only loads them.  ``fit_factors`` (any
model state, e.g. a checkpoint) and ``eigen_factors`` (the stored eigenbases and eigenvalues) are
shared with ``source``.

``per_token`` (tasks with a per-token measurement): kronfluence's per-token scores split each
training example's score over its T input positions — the effect of each *training* token on the
whole query (001 Appendix B.4), the query side summed.  They decompose the gradient of the task's
per-example loss, so they sum over T to the sequence score exactly.  The tensor
``[n_train, T, n_query]`` (tdabench sign and scale) is written to the cache directory, its path is
in the run record's extras, and the score is its token sum.

This file is longer than 300 lines: kronfluence's task adapter, its factor fit and cache, the
eigen-decomposed factors and the per-token scores are one method's steps, each used once.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import logging
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import hessian, vmap

from tdabench.api.config import content_hash
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.seeds import derive_seed
from tdabench.api.task import Batch, Task

from tdabench.api.checks import choices_and_patterns, integer, number

log = logging.getLogger("tdabench")
INSTALL_HINT = ("pip install 'tdabench[ekfac]' && pip install --no-deps kronfluence==1.0.1 (kronfluence declares a "
                "torchvision dependency it never imports, and PyPI's torchvision breaks a CPU torch; see the README)")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EKFACConfig(MethodConfig):
    strategy: Literal["ekfac", "kfac", "diagonal", "identity"] = "ekfac"   # kronfluence's curvature approximation
    damping: Optional[float] = None          # λ; None: kronfluence's heuristic (0.1 × mean eigenvalue)
    fisher: Literal["auto", "sampled", "empirical"] = "auto"   # auto: sampled where the task's outputs are small
    fit_on: Literal["fit_data", "train"] = "fit_data"        # fit_data: task.fit_data() (001: the full training set)
    patterns: tuple[str, ...] = ()           # regexes on parameter names: a Linear/Conv2d is tracked if one matches
    cpu_max_width: int = 8192                # on CPU, leave out layers wider than this (vocabulary heads); 0: no limit
    max_examples: Optional[int] = None       # examples used to fit covariances and eigenvalues (None: all)
    batch_size: int = 64                     # training examples per batch when fitting and scoring
    query_batch_size: int = 256              # queries whose preconditioned gradients are held at once
    query_micro_batch: int = 0               # queries per forward/backward pass (0: query_batch_size); bounds activation memory
    precision: Literal["auto", "float32", "float64", "bfloat16"] = "auto"   # factor/score dtype; auto: the model's
    amp: Literal["off", "bfloat16", "float16"] = "off"      # autocast while fitting and scoring (CUDA only)
    per_token: bool = False                  # save per-training-token scores [n_train, T, n_query] (token tasks)

    def __post_init__(self) -> None:
        choices_and_patterns(self, "ekfac")
        number(self, "ekfac", "damping", "λ added to the curvature; none: kronfluence's 0.1 × mean eigenvalue",
               at_least=0, optional=True)
        integer(self, "ekfac", "cpu_max_width", "the widest layer tracked on CPU; 0: no limit", minimum=0)
        integer(self, "ekfac", "max_examples", "examples per factor fit; none: all", minimum=1, optional=True)
        integer(self, "ekfac", "batch_size", "training examples per batch", minimum=1)
        integer(self, "ekfac", "query_batch_size", "queries preconditioned at once", minimum=1)
        integer(self, "ekfac", "query_micro_batch", "queries per forward/backward pass; 0: query_batch_size", minimum=0)


class _Root(nn.Module):
    """Holds a model that is itself a single Linear/Conv2d (kronfluence replaces tracked modules
    inside their parent, so the root needs one)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def tracked_modules(model: nn.Module, patterns: tuple[str, ...], max_width: int) -> list[str]:
    """Names of the Linear/Conv2d modules to track: one of their parameter names matches
    ``patterns`` (any when empty) and no width exceeds ``max_width`` (0: no limit)."""
    names = []
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, nn.Conv2d):          # kronfluence wraps these exact types
            continue
        params = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if patterns and not any(re.search(pat, p) for pat in patterns for p in params):
            continue
        width = max(getattr(module, a, 0) for a in ("in_features", "out_features", "in_channels", "out_channels"))
        if max_width and width > max_width:
            log.info("ekfac: leaving out %s (width %d > ekfac.cpu_max_width=%d)", name, width, max_width)
            continue
        names.append(name)
    return names


def output_noise(task: Task, outputs: Tensor, batch: Batch, gen: torch.Generator) -> Tensor:
    """Per example a random ``v`` with E[v vᵀ] = ∇²_out ℓ (Hessian square root times a Rademacher
    vector): the gradients of ``(outputs·v).sum()`` then have the Gauss-Newton matrix as second
    moment — the sampled Fisher, for any convex output loss.  Same shape as ``outputs``."""
    flat = outputs.detach().reshape(outputs.shape[0], -1)                            # shape: [B, C]

    def one(o: Tensor, *example: Tensor) -> Tensor:
        return task.output_loss(o.reshape(outputs.shape[1:])[None], tuple(e[None] for e in example)).sum()

    evals, evecs = torch.linalg.eigh(vmap(hessian(one))(flat, *batch).double())     # shape: [B, C], [B, C, C]
    root = evecs * evals.clamp(min=0).sqrt()[:, None, :]
    z = torch.randint(0, 2, flat.shape, generator=gen).to(root) * 2 - 1              # shape: [B, C]
    return (root @ z[..., None]).squeeze(-1).to(outputs.dtype).reshape(outputs.shape)


def sampled_fisher(task: Task, model: nn.Module, data: Batch, choice: str, limit: int = 256) -> bool:
    """Resolve ``fisher``: sampled needs ``outputs``/``output_loss`` and at most ``limit`` outputs
    per example (their Hessian is formed explicitly); ``auto`` falls back to the empirical Fisher."""
    if choice == "empirical":
        return False
    size = None
    if task.has_outputs:
        with torch.no_grad():
            size = task.outputs(model, tuple(t[:1] for t in data))[0].numel()
    if size is not None and size <= limit:
        return True
    why = "exposes no outputs/output_loss" if size is None else f"has {size} outputs per example (limit {limit})"
    if choice == "sampled":
        raise ValueError(f"ekfac.fisher=sampled: task {task.name} {why}; use ekfac.fisher=empirical")
    log.info("ekfac: task %s %s, using the empirical Fisher", task.name, why)
    return False


def kronfluence_task(task: Task, modules: list[str], seed: int) -> Any:
    """kronfluence's Task for a tdabench task: summed training loss (or its sampled-Fisher
    surrogate), summed measurement, the chosen modules."""
    from kronfluence.task import Task as KronTask

    gen = torch.Generator().manual_seed(seed)

    class Adapter(KronTask):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
            batch = tuple(batch)
            if not sample:
                return task.loss(model, batch).sum()
            out = task.outputs(model, batch)
            return (out * output_noise(task, out, batch, gen)).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
            return task.measurement(model, tuple(batch)).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return modules

    return Adapter()


@contextlib.contextmanager
def kronfluence_call() -> Iterator[None]:
    """Around kronfluence's fit/score calls: its FutureWarning about GradScaler silenced, and the
    objects that exist already frozen for the garbage collector — kronfluence calls gc.collect()
    after every stage, which otherwise walks the whole heap (about 0.5-1 s each on this machine)."""
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*GradScaler", category=FutureWarning)
            yield
    finally:
        gc.unfreeze()


def require_kronfluence() -> None:
    try:
        import kronfluence  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ekfac needs kronfluence: {INSTALL_HINT}") from err


@dataclass
class Factors:
    """kronfluence factors fitted (or loaded) for one model state."""

    analyzer: Any                   # kronfluence Analyzer over a prepared copy of the model
    name: str                       # kronfluence's factors_name (a hash of the factor settings)
    modules: list[str]              # tracked modules, named as in the caller's model ("": the model itself)
    kron_modules: list[str]         # the same modules as kronfluence names them
    dtype: torch.dtype              # factor and score dtype
    amp: Optional[torch.dtype]      # autocast dtype (CUDA), None when off


def factor_dtypes(cfg: EKFACConfig, model: nn.Module) -> tuple[torch.dtype, Optional[torch.dtype]]:
    """The factor dtype (``precision``; auto: the model's) and the autocast dtype (None: off)."""
    dtype = next(model.parameters()).dtype if cfg.precision == "auto" else _DTYPES[cfg.precision]
    return dtype, None if cfg.amp == "off" else _DTYPES[cfg.amp]


def fit_factors(ctx: Context, model: nn.Module, cfg: EKFACConfig, analysis: str) -> Factors:
    """Fit kronfluence's ``cfg.strategy`` factors of ``model`` (left untouched) on the task's fit data
    (or the attribution set), stored under ``ctx.cache_dir/kronfluence/analysis`` keyed by the factor
    settings: a second call with the same ``analysis`` (the model's key) and settings only loads them."""
    require_kronfluence()
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments

    if cfg.amp != "off" and ctx.device.type != "cuda":
        raise ValueError(f"ekfac.amp={cfg.amp} needs a CUDA device; use ekfac.amp=off on {ctx.device}")
    modules = tracked_modules(model, cfg.patterns, cfg.cpu_max_width if ctx.device.type == "cpu" else 0)
    if not modules:
        raise ValueError(f"ekfac: no Linear/Conv2d layer matches ekfac.patterns={list(cfg.patterns)} within "
                         f"ekfac.cpu_max_width={cfg.cpu_max_width}; widen the patterns or the limit")
    copied = copy.deepcopy(model)
    copied, kron_modules = (_Root(copied), ["inner"]) if modules == [""] else (copied, modules)
    data = ctx.task.fit_data() if cfg.fit_on == "fit_data" else ctx.train_data
    sampled = sampled_fisher(ctx.task, model, data, cfg.fisher)
    dtype, amp = factor_dtypes(cfg, model)
    factor_args = FactorArguments(
        strategy=cfg.strategy, use_empirical_fisher=not sampled, amp_dtype=amp,
        covariance_max_examples=cfg.max_examples, lambda_max_examples=cfg.max_examples,
        activation_covariance_dtype=dtype, gradient_covariance_dtype=dtype,
        per_sample_gradient_dtype=dtype, lambda_dtype=dtype)
    adapter = kronfluence_task(ctx.task, kron_modules, derive_seed(ctx.seed, 0xEFAC))
    analyzer = Analyzer(analysis_name=analysis, model=prepare_model(copied, adapter), task=adapter,
                        cpu=ctx.device.type == "cpu", disable_tqdm=True, log_level=logging.WARNING,
                        output_dir=str(ctx.cache_dir / "kronfluence"))
    name = content_hash([cfg.strategy, sampled, cfg.fit_on, kron_modules, cfg.max_examples, str(dtype), str(amp),
                         int(data[0].shape[0])])
    with kronfluence_call():
        analyzer.fit_all_factors(factors_name=name, dataset=torch.utils.data.TensorDataset(*data),
                                 per_device_batch_size=cfg.batch_size, factor_args=factor_args)
    return Factors(analyzer, name, modules, kron_modules, dtype, amp)


def eigen_factors(factors: Factors) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Per tracked module (caller's names) the stored eigenbasis and curvature eigenvalues, read from
    kronfluence's files: ``(Q_G [out, out], Q_A [a, a], σ [out, a])`` with ``a`` = input width (+1 for
    the bias column kronfluence appends), so that the block's curvature is
    ``(Q_A ⊗ Q_G) diag(σ) (Q_A ⊗ Q_G)ᵀ`` on gradients laid out as ``[out, a]``.  σ: EK-FAC's corrected
    eigenvalues (lambda_matrix / num_lambda_processed) or K-FAC's products of eigenvalues."""
    from kronfluence.utils import constants as k

    strategy = factors.analyzer.load_factor_args(factors.name).strategy
    if strategy not in ("ekfac", "kfac"):
        raise ValueError(f"eigen_factors needs ekfac or kfac factors, these are {strategy}")
    eig = factors.analyzer.load_eigendecomposition(factors.name)
    lam = factors.analyzer.load_lambda_matrices(factors.name) if strategy == "ekfac" else None
    out = {}
    for mine, theirs in zip(factors.modules, factors.kron_modules):
        if lam is not None:
            sigma = lam[k.LAMBDA_MATRIX_NAME][theirs].double() / lam[k.NUM_LAMBDA_PROCESSED][theirs].double()
        else:
            sigma = torch.outer(eig[k.GRADIENT_EIGENVALUES_NAME][theirs].double(),
                                eig[k.ACTIVATION_EIGENVALUES_NAME][theirs].double())
        out[mine] = (eig[k.GRADIENT_EIGENVECTORS_NAME][theirs], eig[k.ACTIVATION_EIGENVECTORS_NAME][theirs],
                     sigma.clamp(min=0))                                   # shapes: [out, out], [a, a], [out, a]
    return out


def heuristic_damping(factors: Factors) -> dict[str, float]:
    """Per tracked module (caller's names; ``<model>`` for a model that is one layer) the λ that
    kronfluence's heuristic resolves to when ``damping_factor`` is None: 0.1 × the mean of the
    module's curvature eigenvalues, as its ``FactorConfig.prepare`` computes it (EK-FAC / diagonal:
    the corrected eigenvalues, K-FAC: the products of the factor eigenvalues, whose mean is the
    product of the means).  Empty for the ``identity`` strategy, which applies no damping."""
    from kronfluence.utils import constants as k

    strategy = factors.analyzer.load_factor_args(factors.name).strategy
    out: dict[str, float] = {}
    if strategy in ("ekfac", "diagonal"):
        lam = factors.analyzer.load_lambda_matrices(factors.name)
        for mine, theirs in zip(factors.modules, factors.kron_modules):
            mean = lam[k.LAMBDA_MATRIX_NAME][theirs].double().mean() / lam[k.NUM_LAMBDA_PROCESSED][theirs].double()
            out[mine or "<model>"] = float(k.HEURISTIC_DAMPING_SCALE * mean)
    elif strategy == "kfac":
        eig = factors.analyzer.load_eigendecomposition(factors.name)
        for mine, theirs in zip(factors.modules, factors.kron_modules):
            mean = (eig[k.GRADIENT_EIGENVALUES_NAME][theirs].double().mean()
                    * eig[k.ACTIVATION_EIGENVALUES_NAME][theirs].double().mean())
            out[mine or "<model>"] = float(k.HEURISTIC_DAMPING_SCALE * mean)
    return out


@register_method
class EKFAC(Method):
    name = "ekfac"
    description = "influence function with kronfluence's EK-FAC / K-FAC / diagonal / identity curvature"
    Config = EKFACConfig
    #: --set ekfac.damping=auto: λ (the default is kronfluence's 0.1 × mean eigenvalue)
    tunable = {"damping": ("0.00001", "0.0001", "0.001", "0.01", "0.1", "1", "10")}
    requires = ("kronfluence",)
    install_hint = INSTALL_HINT

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._factors: Optional[Factors] = None
        self._damping: dict[str, Any] = {}
        self._extras: dict[str, Any] = {}

    def extras(self) -> dict[str, Any]:
        """The damping as used (configured λ, or the heuristic and the λ it resolved to per tracked
        module) and, with ``per_token``, where the per-token scores are."""
        return {**self._damping, **self._extras}

    def fit(self, ctx: Context) -> None:
        """Fit (or load) the factors of the reference model; keep them for ``score``."""
        cfg = self.config
        self._factors = fit_factors(ctx, ctx.model, cfg, ctx.model_key or f"unkeyed-{uuid.uuid4().hex}")
        if cfg.strategy == "identity":
            self._damping = {"damping": cfg.damping, "damping_applied": False}   # kronfluence ignores it
        elif cfg.damping is not None:
            self._damping = {"damping": cfg.damping, "damping_applied": True}
        else:
            self._damping = {"damping": "kronfluence heuristic (0.1 × mean eigenvalue)", "damping_applied": True,
                             "damping_used": heuristic_damping(self._factors)}   # per tracked module

    def score(self, ctx: Context) -> Tensor:
        """−(1/n)·kronfluence's pairwise scores, shape ``[n_train, n_query]``; with ``per_token`` the
        token sum of the per-token scores, which are saved to the cache directory."""
        cfg = self.config
        if cfg.per_token and not ctx.task.has_token_measurement:
            raise ValueError(f"ekfac.per_token=true needs a task with a per-token measurement; {ctx.task.name} has "
                             f"none (use ekfac.per_token=false)")
        if self._factors is None:
            self.fit(ctx)
        self._extras = {}
        raw = self._pairwise(ctx)                      # shape: [n_query, n_train] or [n_query, n_train, T]
        scores = -raw.double().movedim(0, -1) / ctx.n_train        # shape: [n_train, n_query] or [n_train, T, n_query]
        if not cfg.per_token:
            return scores.float()
        if scores.dim() != 3:
            raise RuntimeError("kronfluence returned no per-token scores (it disables them for models with shared "
                               "parameters or tracked layers that see no token dimension); use ekfac.per_token=false")
        path = ctx.cache_dir / "per_token" / f"{content_hash([ctx.model_key, self._factors.name, str(cfg)])}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(scores.float().cpu(), path)
        self._extras = {"per_token_scores": str(path), "per_token_shape": list(scores.shape)}
        return scores.sum(1).float()                                # shape: [n_train, n_query]

    def _pairwise(self, ctx: Context) -> Tensor:
        """kronfluence's raw pairwise scores ``∇φ_jᵀ(G + λI)⁻¹∇ℓ_i`` (per training token with ``per_token``)."""
        from kronfluence.arguments import ScoreArguments

        cfg, f = self.config, self._factors
        assert f is not None
        held = min(cfg.query_batch_size, ctx.n_query)
        micro = min(cfg.query_micro_batch or held, held)     # query passes stay small; their gradients accumulate
        score_args = ScoreArguments(damping_factor=cfg.damping, amp_dtype=f.amp, per_sample_gradient_dtype=f.dtype,
                                    precondition_dtype=f.dtype, score_dtype=f.dtype,
                                    compute_per_token_scores=cfg.per_token,
                                    query_gradient_accumulation_steps=-(-held // micro))
        name = f"tdabench-{uuid.uuid4().hex}"      # scores depend on the queries: never reused
        try:
            with kronfluence_call():
                f.analyzer.compute_pairwise_scores(
                    scores_name=name, factors_name=f.name, score_args=score_args,
                    query_dataset=torch.utils.data.TensorDataset(*ctx.query_data),
                    train_dataset=torch.utils.data.TensorDataset(*ctx.train_data),
                    per_device_query_batch_size=micro,
                    per_device_train_batch_size=cfg.batch_size)
            return f.analyzer.load_pairwise_scores(name)["all_modules"].to(ctx.device)
        finally:
            shutil.rmtree(f.analyzer.scores_output_dir(name), ignore_errors=True)
