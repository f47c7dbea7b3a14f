"""trak: TRAK (Park et al. 2023; 001 A.3) through traker — projected gradients Φ of an ensemble of
independently trained models, score = Φ_train (ΦᵀΦ + λI)⁻¹ φ_query, averaged over the ensemble.

tdabench's adapters around traker:

* model output: the task's own per-example training loss for the attribution set and its
  measurement for the queries (traker's built-ins assume a classification margin); the
  out-to-loss factor Q is then 1.  With the loss as output, ΦᵀΦ is n/d times the (projected)
  empirical Fisher F (traker divides gradients by √d), so one unprojected model gives exactly
  c·∇ℓ_iᵀ (F + λI)⁻¹ ∇φ_j with c > 0 — positive for a helpful example, so tdabench's sign is its
  negation.  c is arbitrary (traker rescales (ΦᵀΦ)⁻¹ per model); ``damping`` λ is converted to
  traker's ``lambda_reg`` = λ·n/d.  Damping matters: a trained model fits most of its examples, F
  is ill-conditioned, and undamped TRAK scored LDS ≈ 0.01 on digits.  The default is kronfluence's
  heuristic, 0.1 × the mean eigenvalue of F, per ensemble member.
* gradients: tdabench.toolkit.grads.per_example_grads (the shared code), w.r.t. ``patterns``.
* projection: ``projector=sparse`` swaps the dense Gaussian for a sparse JL projection
  (tdabench.toolkit.sparse_projection: d·nnz work per example instead of d·k).  traker's CPU projector
  regenerates its random matrix for every block of every batch, and with one block (fast) ``finalize_features`` frees the matrix that ``score`` then
  needs.  ``SeededProjector`` holds tdabench's seeded Gaussian projection once and regenerates it
  after ``free_memory``.  A projection at least as wide as the gradient is skipped (identity).
* ensemble: ``models`` members trained through the task's recipe on random ``subset_fraction``
  subsets with seeds derived from the run's seed (never the ground-truth retrains), or the
  reference model as first member; ``checkpoints`` per member, cached in the method's cache.

This file is longer than 300 lines: traker's projector, gradient computer and model output are
wrapped for tdabench's tasks, and the ensemble's members are trained and cached here; each piece
is used only by this method.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn

from tdabench.toolkit.checkpoints import checkpoint_steps
from tdabench.api.config import content_hash
from tdabench.toolkit.grads import ExampleFn, Projector, num_params, per_example_grads, select_params
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.api.seeds import derive_seed
from tdabench.toolkit.sparse_projection import SparseProjector
from tdabench.api.task import Batch, batches

from tdabench.api.checks import choices_and_patterns, integer, number

log = logging.getLogger("tdabench")
State = dict[str, Tensor]


@dataclass(frozen=True)
class TRAKConfig(MethodConfig):
    proj_dim: int = 2048                 # k; a k at least the parameter count means no projection
    models: int = 5                      # ensemble members
    use_reference: bool = True           # the reference model is member 0 (trained on the full set)
    subset_fraction: float = 0.5         # each other member trains on this fraction of the attribution set
    checkpoints: int = 1                 # checkpoints per member, evenly spaced, ending at the final model
    damping: Optional[float] = None      # λ on the mean empirical Fisher (as if.damping); None: 0.1 × mean eigenvalue
    half_precision: bool = False         # float16 features (CUDA only)
    batch_size: int = 128                # examples per featurize / score batch
    patterns: tuple[str, ...] = ()       # regexes of parameter names (empty: all)
    projector_memory_mb: int = 4096      # hold the d×k projection matrix up to this size, else regenerate in blocks
    projector: Literal["dense", "sparse"] = "dense"   # dense Gaussian, or sparse JL (nnz ±1/√nnz per coordinate: d·nnz work)
    nnz: int = 2                         # sparse: nonzeros per gradient coordinate

    def __post_init__(self) -> None:
        choices_and_patterns(self, "trak")
        integer(self, "trak", "proj_dim", "k, the projected gradient dimension", minimum=1)
        integer(self, "trak", "models", "ensemble members", minimum=1)
        number(self, "trak", "subset_fraction", "the share of the attribution set each trained member sees",
               above=0, at_most=1)
        integer(self, "trak", "checkpoints", "checkpoints per member", minimum=1)
        number(self, "trak", "damping", "λ on the mean empirical Fisher; none: 0.1 × its mean eigenvalue", at_least=0,
               optional=True)
        integer(self, "trak", "batch_size", "examples per featurize / score batch", minimum=1)
        integer(self, "trak", "nnz", "nonzeros per gradient coordinate of the sparse projection", minimum=1)
        integer(self, "trak", "projector_memory_mb", "the largest projection matrix held in memory; 0: regenerate "
                "it in blocks", minimum=0)


class SeededProjector:
    """traker's projector interface over tdabench's seeded Gaussian ``Projector``: the matrix is
    built once (not per block and batch), the same for every model id, and rebuilt after
    ``free_memory`` (which ``finalize_features`` calls before scoring)."""

    proj_type = "normal"

    def __init__(self, grad_dim: int, proj_dim: int, seed: int, device: torch.device, memory_mb: int = 4096,
                 kind: str = "dense", nnz: int = 2) -> None:
        self.grad_dim, self.proj_dim, self.seed, self.device = grad_dim, proj_dim, seed, device
        self.cache_limit = memory_mb * 2**20 // 4                  # float32 entries
        self.kind, self.nnz = kind, nnz
        self._proj: Optional[Callable[[Tensor], Tensor]] = None

    def project(self, grads: Tensor | dict[str, Tensor], model_id: int) -> Tensor:
        if isinstance(grads, dict):
            grads = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
        if self._proj is None and self.kind == "sparse":
            self._proj = SparseProjector(self.grad_dim, self.proj_dim, self.seed, self.device, self.nnz)
        elif self._proj is None:
            self._proj = Projector(self.grad_dim, self.proj_dim, self.seed, self.device, cache_limit=self.cache_limit)
        return self._proj(grads.float())                               # shape: [B, k]

    def free_memory(self) -> None:
        self._proj = None


class TaskOutput:
    """traker's model-output interface for a tdabench task: ``fn`` is the task's loss while
    featurizing the attribution set and its measurement while scoring the queries."""

    def __init__(self, fn: ExampleFn) -> None:
        self.fn = fn

    def get_output(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.fn(model, tuple(batch))                            # shape: [B]

    def get_out_to_loss_grad(self, model: nn.Module, batch: Batch) -> Tensor:
        return torch.ones(batch[0].shape[0], 1, device=batch[0].device)  # Q = ∂loss/∂output = 1


def gradient_computer(patterns: tuple[str, ...]) -> Callable[..., Any]:
    """A traker gradient-computer class whose per-example gradients come from tdabench.toolkit.grads."""

    class TaskGradients:
        def __init__(self, model: nn.Module, task: TaskOutput, grad_dim: int, dtype: torch.dtype,
                     device: Any, grad_wrt: Any = None) -> None:
            self.model, self.output = model, task
            self.params = select_params(model, patterns)

        def load_model_params(self, model: nn.Module) -> None:
            self.model, self.params = model, select_params(model, patterns)

        def compute_per_sample_grad(self, batch: Batch) -> Tensor:
            batch = tuple(batch)
            return per_example_grads(self.model, self.output.fn, batch, self.params, batch[0].shape[0])

        def compute_loss_grad(self, batch: Batch) -> Tensor:
            return self.output.get_out_to_loss_grad(self.model, tuple(batch))

    return TaskGradients


@contextlib.contextmanager
def no_traker_bars() -> Any:
    """traker's finalize steps draw tqdm bars on stderr that no setting turns off; tdabench reports
    progress itself, so the bars are swapped for the plain iterable while they run."""
    import trak.traker as module

    original = module.tqdm
    module.tqdm = lambda iterable, **_: iterable
    try:
        yield
    finally:
        module.tqdm = original


def require_traker() -> None:
    try:
        import trak  # noqa: F401
    except ImportError as err:
        raise ImportError("trak needs traker: pip install traker==0.3.2 (without the [fast] extra)") from err


def _cpu_state(model: nn.Module) -> State:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_member(ctx: Context, member: int, fraction: float, n_checkpoints: int) -> list[State]:
    """Train ensemble member ``member`` through the task's recipe on a random ``fraction`` of the
    attribution set; its ``n_checkpoints`` states (the last is the final model), on the CPU."""
    seed = derive_seed(ctx.seed, 0x78A4, member, 0)          # 4 parts: never a ground-truth retrain seed
    size = max(1, round(fraction * ctx.n_train))
    indices = torch.randperm(ctx.n_train, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    model = ctx.task.make_model(seed)
    steps = checkpoint_steps(ctx.task.total_steps(size), n_checkpoints) if n_checkpoints > 1 else ()
    states: list[State] = []
    ctx.task.train(model, indices.to(ctx.device), seed, on_checkpoint=lambda s, m, lr: states.append(_cpu_state(m)),
                   checkpoint_steps=steps)
    return states if steps else [_cpu_state(model)]


@register_method
class TRAK(Method):
    name = "trak"
    description = "TRAK via traker: projected loss gradients of a model ensemble, (ΦᵀΦ)⁻¹-weighted"
    Config = TRAKConfig
    #: --set trak.damping=auto: λ on the features' Fisher (the default is 0.1 × mean eigenvalue)
    tunable = {"damping": ("0.00001", "0.0001", "0.001", "0.01", "0.1", "1", "10")}
    requires = ("trak",)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._traker: Any = None
        self._dir: Path = Path()
        self._temporary = False
        self._states: list[State] = []
        self._lambda_regs: list[float] = []      # traker's lambda_reg per (member, checkpoint) state
        self._scale = 1.0                        # d/n: λ = lambda_reg·d/n
        self._extras: dict[str, Any] = {}

    def extras(self) -> dict[str, Any]:
        """The damping as used: λ per ensemble state (resolved when the heuristic is on) and traker's
        lambda_reg = λ·n/d."""
        return dict(self._extras)

    @property
    def needs_checkpoints(self) -> int:
        return self.config.checkpoints if self.config.use_reference and self.config.checkpoints > 1 else 0

    def members(self, ctx: Context) -> list[State]:
        """Every (member, checkpoint) state of the ensemble; trained members are cached."""
        cfg = self.config
        states: list[State] = []
        self.check_checkpoints(ctx)
        if cfg.use_reference:
            states += [c.state for c in ctx.checkpoints] if cfg.checkpoints > 1 else [_cpu_state(ctx.model)]
        for member in range(1 if cfg.use_reference else 0, cfg.models):
            key = content_hash([ctx.model_key, member, cfg.subset_fraction, cfg.checkpoints])
            path = ctx.cache_dir / "trak-members" / f"{key}.pt"
            if ctx.model_key and path.exists():
                states += torch.load(path, map_location="cpu")
                continue
            trained = train_member(ctx, member, cfg.subset_fraction, cfg.checkpoints)
            if ctx.model_key:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(trained, path)
            states += trained
        return states

    def _store(self, ctx: Context, d: int) -> tuple[Path, bool]:
        """traker's feature store: kept in the cache (keyed by the model and every setting the
        features depend on) when the model has a key, else a temporary directory."""
        cfg = self.config
        if not ctx.model_key:
            return Path(tempfile.mkdtemp(prefix="trak-", dir=ctx.cache_dir)), True
        key = content_hash([ctx.model_key, cfg.models, cfg.use_reference, cfg.subset_fraction, cfg.checkpoints,
                            cfg.proj_dim, cfg.patterns, cfg.damping, cfg.half_precision, d]
                           + ([cfg.projector, cfg.nnz] if cfg.projector != "dense" else []))
        return ctx.cache_dir / "trak" / key, False

    def fit(self, ctx: Context) -> None:
        """Train (or load) the ensemble; featurize the attribution set under every state (or load
        the features a previous run stored)."""
        require_traker()
        from trak import TRAKer
        from trak.projectors import NoOpProjector

        cfg = self.config
        if cfg.half_precision and ctx.device.type != "cuda":
            raise ValueError(f"trak.half_precision=true needs CUDA; set it false on {ctx.device}")
        self._states = self.members(ctx)
        model = ctx.task.make_model(0)
        params = select_params(model, cfg.patterns)
        names, d = list(params), num_params(params)
        if cfg.proj_dim >= d:                   # a projection this wide cannot reduce anything: identity
            proj: Any = NoOpProjector(grad_dim=d, proj_dim=0, seed=0, proj_type="normal", device=ctx.device)
        else:
            proj = SeededProjector(d, cfg.proj_dim, derive_seed(ctx.seed, 0x9A0), ctx.device, cfg.projector_memory_mb,
                                   cfg.projector, cfg.nnz)
        self._dir, self._temporary = self._store(ctx, d)
        self._traker = TRAKer(model=model, task=TaskOutput(ctx.task.loss), train_set_size=ctx.n_train,
                              save_dir=str(self._dir), device=str(ctx.device), projector=proj,
                              gradient_computer=gradient_computer(cfg.patterns), use_half_precision=cfg.half_precision,
                              grad_wrt=names, logging_level=logging.WARNING)
        todo = [i for i in range(len(self._states)) if not self._traker.saver.model_ids.get(i, {}).get("is_finalized")]
        for model_id in todo:
            self._traker.load_checkpoint(self._states[model_id], model_id=model_id)
            for b in batches(ctx.train_data, cfg.batch_size):
                self._traker.featurize(batch=b, num_samples=b[0].shape[0])
        self._scale, self._lambda_regs = d / ctx.n_train, []
        for model_id in range(len(self._states)):   # after featurizing: finalize frees the projection matrix
            if model_id in todo or cfg.damping is None:
                self._traker.saver.load_current_store(model_id)
            reg = self._lambda_reg(self._traker.saver.current_store["grads"] if cfg.damping is None else None,
                                   ctx.n_train, d)
            self._lambda_regs.append(reg)        # stored features were finalized with this same value
            if model_id in todo:
                self._traker.score_computer.lambda_reg = reg
                with no_traker_bars():
                    self._traker.finalize_features(model_ids=[model_id])

    def _lambda_reg(self, features: Optional[np.ndarray], n: int, d: int) -> float:
        """traker's ridge for damping λ: ΦᵀΦ ≈ (n/d)·F, so lambda_reg = λ·n/d; the heuristic λ is
        0.1·tr(F)/d, i.e. lambda_reg = 0.1·tr(ΦᵀΦ)/d (features: Φ, shape [n, k]; only read for it)."""
        if self.config.damping is not None:
            return self.config.damping * n / d
        assert features is not None
        return 0.1 * float((torch.as_tensor(np.asarray(features), dtype=torch.float64) ** 2).sum()) / d

    def _forget(self, experiment: str) -> None:
        """Delete one scoring experiment's files from the feature store."""
        for path in [self._dir / "scores" / f"{experiment}.mmap",
                     *(self._dir / str(i) / f"{experiment}_grads.mmap" for i in range(len(self._states)))]:
            path.unlink(missing_ok=True)
        book = self._dir / "experiments.json"
        if book.exists():
            book.write_text(json.dumps({k: v for k, v in json.loads(book.read_text()).items() if k != experiment}))

    def score(self, ctx: Context) -> Tensor:
        if self._traker is None:
            self.fit(ctx)
        traker, cfg = self._traker, self.config
        traker.task.fn = ctx.task.measurement
        experiment = f"queries-{uuid.uuid4().hex}"          # the queries change between runs: never reused
        try:
            for model_id, state in enumerate(self._states):
                traker.start_scoring_checkpoint(experiment, state, model_id=model_id, num_targets=ctx.n_query)
                for b in batches(ctx.query_data, cfg.batch_size):
                    traker.score(batch=b, num_samples=b[0].shape[0])
            with no_traker_bars():
                raw = torch.from_numpy(np.array(traker.finalize_scores(experiment), dtype=np.float64))
        finally:
            traker.task.fn = ctx.task.loss
            self._forget(experiment)
            if self._temporary:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._traker = None
        self._extras = {
            "damping": cfg.damping if cfg.damping is not None else "heuristic: 0.1 × mean eigenvalue of F per state",
            "damping_used": [reg * self._scale for reg in self._lambda_regs],     # λ per (member, checkpoint)
            "lambda_reg": list(self._lambda_regs),                                 # traker's ridge, λ·n/d
        }
        return (-raw).float().to(ctx.device)                           # shape: [n_train, n_query]
