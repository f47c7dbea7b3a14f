"""bif: the local Bayesian influence function, score[i, j] = −Cov(ℓ_i(w), φ_j(w)) (or −Corr) over draws of
(RMSprop-)SGLD from the localized tempered posterior  p(w) ∝ exp(−nβ·(mean_k ℓ_k(w) + R(w)) − γ/2·‖w − w*‖²)
around the reference model w* (001 Sec. 2.3/3 and App. B.1; 002 App. B).  R is the task's regulariser
(``include_regularizer``), so that w* — the optimum of the training objective — is a stationary point of
the potential.  Chains are pooled; draws are recorded by no-grad forward passes over every attribution
example and every query, separate from the SGLD minibatches.  Chain c draws its noise and minibatches
from its own streams (seeded by the run's seed and c), so chains can run in separate processes
(``workers``, CPU) and their draws are pooled in chain order: the scores do not depend on the workers.

Sampling happens in ``score``: the chains cannot be separated from recording the query observables
without storing every draw's parameters (C·T model copies); recording the queries during sampling is what
makes the BIF cost one sampling run for all queries.  Diagnostics (loss traces, ESS, memory mode, where the
time went) land in ``self.diagnostics`` and ``ctx.cache_dir/bif-diagnostics-seed<seed>.json`` (+ a plot).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn

from tdabench.toolkit.forkpool import fork_map
from tdabench.toolkit.grads import select_params
from tdabench.api.method import Context, Method, MethodConfig
from tdabench.api.registry import register_method
from tdabench.toolkit.sgld import (
    DivergenceGuard, LocalSGLD, SamplerSettings, correlation, covariance, effective_sample_size, estimator_bytes,
    make_estimator, minibatch, plot_traces, run_chain, run_chains,
)
from tdabench.api.seeds import derive_seed
from tdabench.api.task import Batch, Task, batches, take
from tdabench.toolkit.meter import machine_memory

from tdabench.api.checks import choices_and_patterns, fail, integer, number


@dataclass(frozen=True)
class BIFConfig(MethodConfig):
    sampler: Literal["rmsprop", "sgld"] = "rmsprop"     # RMSprop-preconditioned or plain SGLD
    epsilon: float = 3e-4            # step size ε (swept on digits; see the README)
    nbeta: float = 100.0             # nβ, inverse temperature × effective dataset size
    gamma: float = 100.0             # γ, localization strength around w*
    chains: int = 4                  # C independent chains from w*, pooled
    draws: int = 500                 # T recorded draws per chain
    burn_in: int = 50                # SGLD steps discarded at the start of each chain
    thin: int = 1                    # SGLD steps between recorded draws
    batch_size: int = 64             # b, SGLD minibatch from task.fit_data()
    rms_alpha: float = 0.99          # RMSprop decay
    rms_delta: float = 0.1           # RMSprop stability constant
    noise: float = 1.0               # Langevin noise scale (0: noiseless descent; limit tests)
    estimator: Literal["covariance", "correlation"] = "covariance"   # BIF or normalized BIF
    memory: Literal["auto", "trace", "streaming"] = "auto"            # auto: trace unless too large
    aggregation: Literal["sequence", "token"] = "sequence"            # token: per-token φ, then mean
    patterns: tuple[str, ...] = ()   # regexes of parameter names to sample (others frozen at w*)
    include_regularizer: bool = True  # add the task's regulariser to the potential
    record_batch_size: int = 1024    # examples per recording forward pass (and per backward pass of a larger minibatch)
    record_dtype: Literal["float32", "bfloat16"] = "float32"   # the recording passes' dtype (bfloat16: autocast)
    diverge_factor: float = 100.0    # stop when the mean train loss exceeds this × (its value at w* + d/(2nβ))
    workers: int = 1                 # processes sampling chains at once (CPU, forked; the torch threads shared out); same scores for any count

    def __post_init__(self) -> None:
        """Reject settings that cannot define a sampler or an estimator, naming the key and the fix."""
        choices_and_patterns(self, "bif")
        number(self, "bif", "epsilon", "the SGLD step size", above=0)
        number(self, "bif", "nbeta", "nβ, the inverse temperature × effective dataset size", above=0)
        number(self, "bif", "gamma", "γ, the localization strength; 0: no localization", at_least=0)
        integer(self, "bif", "chains", "the number of SGLD chains", minimum=1)
        integer(self, "bif", "draws", "recorded draws per chain", minimum=1)
        integer(self, "bif", "burn_in", "SGLD steps discarded per chain; 0: none", minimum=0)
        integer(self, "bif", "thin", "SGLD steps between recorded draws", minimum=1)
        integer(self, "bif", "batch_size", "the SGLD minibatch size", minimum=1)
        number(self, "bif", "rms_alpha", "the RMSprop decay", at_least=0, below=1)
        number(self, "bif", "rms_delta", "the RMSprop stability constant, divides the gradient scale", above=0)
        number(self, "bif", "noise", "the Langevin noise scale; 0: noiseless descent", at_least=0)
        integer(self, "bif", "record_batch_size", "examples per recording forward pass", minimum=1)
        integer(self, "bif", "workers", "processes sampling chains at once (CPU)", minimum=1)
        # A factor ≤ 1 stops every chain at its first noisy step; inf turns the guard off.
        number(self, "bif", "diverge_factor", "the multiple of w*'s loss + d/(2nβ) that stops a chain; inf: never",
               above=1, finite=False)
        if self.chains * self.draws < 2:   # a covariance needs two draws
            fail("bif", "draws", self.draws, f"≥ 2 with bif.chains={self.chains}", "a covariance needs at least "
                 "two draws in all", 500)

    def settings(self) -> SamplerSettings:
        return SamplerSettings(nbeta=self.nbeta, gamma=self.gamma, epsilon=self.epsilon,
                               preconditioner="rmsprop" if self.sampler == "rmsprop" else "identity",
                               alpha=self.rms_alpha, delta=self.rms_delta, noise=self.noise)

    def check(self, task: Task) -> None:
        """Fail early on settings that cannot run on ``task`` (the task-independent ones failed in
        ``__post_init__``), naming the key to change."""
        if self.aggregation == "token" and not task.has_token_measurement:
            raise ValueError(f"bif.aggregation=token needs a per-token measurement; task {task.name} has "
                             "none: use bif.aggregation=sequence")
        self._check_memory(task)
        if self.workers > 1 and task.device.type != "cpu":
            raise ValueError(f"bif.workers={self.workers} forks processes, which a {task.device.type} device "
                             "does not survive: use bif.workers=1 there")


    def _check_memory(self, task: Task) -> None:
        """Refuse, before any training, chains × draws whose own state cannot fit this machine: the per-chain
        loss traces (two float64 ``[C, T]``) and, on the CPU, the estimator ``auto`` would keep (at least
        one column per query: a lower bound for per-token observables)."""
        draws = self.chains * self.draws
        need = estimator_bytes(draws, task.n_train, task.n_query)
        mode = self.memory if self.memory != "auto" else (
            "trace" if need["trace"] <= max(need["streaming"], 512 * 2**20) else "streaming")
        total = 2 * 8 * draws + (need[mode] if task.device.type == "cpu" else 0)
        have = machine_memory()
        if have and total > have:
            fail("bif", "draws", self.draws, f"small enough that bif.chains × bif.draws fits this machine's "
                 f"{have / 2**30:.0f} GB", f"{self.chains} × {self.draws} draws need ≥ {total / 2**30:,.0f} GB of "
                 f"traces and estimator state; lower bif.chains or bif.draws", 500)


def record(model: nn.Module, fn: Any, data: Batch, batch_size: int, dtype: str = "float32") -> Tensor:
    """``fn(model, batch)`` over every row without gradients, flattened per row: shape ``[n·k]``, float32.
    ``dtype="bfloat16"`` runs the passes under autocast (the draws' losses in reduced precision, the
    sampler untouched)."""
    cast = torch.autocast(data[0].device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with torch.no_grad(), cast:
        out = torch.cat([fn(model, b).reshape(b[0].shape[0], -1) for b in batches(data, batch_size)])
    return out.float().reshape(-1)


class _Recorder:
    """Observes the current parameters: adds one draw to the estimator, keeps per-chain mean traces."""

    def __init__(self, ctx: Context, cfg: BIFConfig, estimator: Any) -> None:
        task = ctx.task
        self.ctx, self.cfg, self.est = ctx, cfg, estimator
        self.query_fn = task.token_measurement if cfg.aggregation == "token" else task.measurement
        self.train_trace = torch.zeros(cfg.chains, cfg.draws, dtype=torch.float64)   # shape: [C, T]
        self.query_trace = torch.zeros(cfg.chains, cfg.draws, dtype=torch.float64)   # shape: [C, T]
        self.n_columns = 0                                                           # query observables
        self.recording_seconds = 0.0                                                 # in this process
        self.sampling_seconds = 0.0

    def observe(self) -> tuple[Tensor, Tensor]:
        ctx, b = self.ctx, self.cfg.record_batch_size
        start = time.perf_counter()
        x = record(ctx.model, ctx.task.loss, ctx.train_data, b, self.cfg.record_dtype)        # shape: [n_train]
        y = record(ctx.model, self.query_fn, ctx.query_data, b, self.cfg.record_dtype)        # shape: [n_query·T]
        self.recording_seconds += time.perf_counter() - start
        return x, y

    def add(self, chain: int, draw: int, x: Tensor, y: Tensor) -> float:
        """Draw ``draw`` of chain ``chain`` into the estimator and the traces; its mean train loss."""
        self.est.add(x, y)
        self.train_trace[chain, draw], self.query_trace[chain, draw] = float(x.mean()), float(y.mean())
        return float(self.train_trace[chain, draw])

    def __call__(self, chain: int, draw: int) -> float:
        return self.add(chain, draw, *self.observe())

    def keeper(self) -> tuple[Callable[[int, int], float], list[tuple[np.ndarray, np.ndarray]]]:
        """A recorder for a chain sampled in another process, and the list it keeps the draws in."""
        kept: list[tuple[np.ndarray, np.ndarray]] = []

        def keep(chain: int, draw: int) -> float:
            x, y = self.observe()
            kept.append((x.cpu().numpy(), y.cpu().numpy()))
            return float(x.mean())
        return keep, kept


@register_method
class BIF(Method):
    name = "bif"
    description = "local Bayesian influence function: −Cov(ℓ_i, φ_j) over (RMSprop-)SGLD draws around w*"
    Config = BIFConfig
    #: --set bif.epsilon=auto (the SGLD step size)
    tunable = {"epsilon": ("0.00003", "0.0001", "0.0003", "0.001", "0.003")}

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.diagnostics: dict[str, Any] = {}

    def check(self, task: Task) -> None:
        """The settings' checks that need the task, before any training (``score`` runs them again)."""
        self.config.check(task)

    def extras(self) -> dict[str, Any]:
        """The sampler diagnostics (ESS, memory mode, per-chain loss traces) for the run record."""
        return {k: v for k, v in self.diagnostics.items() if k not in ("config", "plot")}

    def _potential(self, ctx: Context, streams: dict[str, torch.Generator], params: list[Tensor]) -> Any:
        """U_B(w): the minibatch mean training loss (+ the task's regulariser).  A minibatch larger than
        ``record_batch_size`` is run in pieces of that size, each backpropagated at once, and the
        potential is returned with its accumulated gradient (a language model's logits over a full
        minibatch of long sequences need not fit in memory)."""
        task, cfg, data = ctx.task, self.config, ctx.task.fit_data()
        n = int(data[0].shape[0])

        def regularizer() -> Tensor:
            return task.regularizer(ctx.model) if cfg.include_regularizer else torch.zeros((), device=ctx.device)

        def potential() -> Tensor | tuple[Tensor, list[Tensor]]:
            idx = minibatch(n, cfg.batch_size, streams["batch"])
            batch = data if idx is None else take(data, idx)
            size = int(batch[0].shape[0])
            if size <= cfg.record_batch_size:
                return task.loss(ctx.model, batch).mean() + regularizer()
            grads = [torch.zeros_like(p) for p in params]
            value = torch.zeros((), device=ctx.device)
            for piece in batches(batch, cfg.record_batch_size):
                part = task.loss(ctx.model, piece).sum() / size
                for g, d in zip(grads, torch.autograd.grad(part, params)):
                    g.add_(d)
                value += part.detach()
            reg = regularizer()
            if reg.requires_grad:
                for g, d in zip(grads, torch.autograd.grad(reg, params, allow_unused=True)):
                    if d is not None:
                        g.add_(d)
            return value + reg.detach(), grads

        return potential

    def score(self, ctx: Context) -> Tensor:
        cfg = self.config
        cfg.check(ctx.task)
        params = select_params(ctx.model, cfg.patterns)
        was_training = ctx.model.training
        ctx.model.eval()                      # deterministic function of w: no dropout, BatchNorm frozen
        try:
            est, rec, start = self._sample(ctx, list(params.values()))
        finally:
            ctx.model.train(was_training)
        scores = correlation(est) if cfg.estimator == "correlation" else covariance(est)
        scores = -scores.reshape(ctx.n_train, ctx.n_query, -1).mean(-1)      # shape: [n_train, n_query]
        self._diagnose(ctx, est, rec, start)
        return scores.float()

    def _sample(self, ctx: Context, params: list[Tensor]) -> tuple[Any, _Recorder, float]:
        """Every chain's draws into one estimator, in chain order: chain c has its own noise and
        minibatch streams (seeded by the run's seed and c), so the chains can run in any process."""
        cfg = self.config
        probe = _Recorder(ctx, cfg, None).observe()
        est = make_estimator(cfg.memory, cfg.chains * cfg.draws, probe[0].numel(), probe[1].numel())
        rec = _Recorder(ctx, cfg, est)
        rec.n_columns = probe[1].numel()
        start = float(probe[0].mean())
        guard = DivergenceGuard(start, cfg.diverge_factor, cfg.settings(), prefix="bif.",
                                n_params=sum(p.numel() for p in params))
        sampler = LocalSGLD(params, cfg.settings(), torch.Generator(device=ctx.device))
        streams: dict[str, torch.Generator] = {}
        potential = self._potential(ctx, streams, params)

        def begin(chain: int) -> None:
            sampler.generator = torch.Generator(device=ctx.device).manual_seed(derive_seed(ctx.seed, chain, 17))
            streams["batch"] = torch.Generator().manual_seed(derive_seed(ctx.seed, chain, 29))

        def elsewhere(chain: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
            """A chain's draws, sampled in a worker process, with its seconds in all and in recording."""
            clock, before = time.perf_counter(), rec.recording_seconds
            begin(chain)
            keep, kept = rec.keeper()
            run_chain(sampler, potential, keep, chain, cfg.draws, cfg.burn_in, cfg.thin, guard)
            return kept, time.perf_counter() - clock, rec.recording_seconds - before

        clock = time.perf_counter()
        if cfg.workers == 1:        # streamed: the estimator's memory, not a chain's draws
            run_chains(sampler, potential, rec, cfg.chains, cfg.draws, cfg.burn_in, cfg.thin, guard, begin=begin)
            rec.sampling_seconds = time.perf_counter() - clock
        else:
            rec.sampling_seconds = 0.0                   # summed over the chains (they ran side by side)
            for chain, (kept, seconds, recording) in enumerate(fork_map(elsewhere, cfg.chains, cfg.workers)):
                rec.sampling_seconds += seconds
                rec.recording_seconds += recording
                for draw, (x, y) in enumerate(kept):
                    rec.add(chain, draw, torch.from_numpy(x).to(ctx.device), torch.from_numpy(y).to(ctx.device))
        return est, rec, start

    def _diagnose(self, ctx: Context, est: Any, rec: _Recorder, start: float) -> None:
        cfg = self.config
        need = estimator_bytes(cfg.chains * cfg.draws, ctx.n_train, rec.n_columns)
        self.diagnostics = {
            "memory_mode": est.mode, "expected_bytes": need, "train_loss_at_w_star": start,
            "ess_train_loss": effective_sample_size(rec.train_trace),
            "ess_query_loss": effective_sample_size(rec.query_trace),
            # where the sampling time goes (in chain-seconds when chains ran in worker processes)
            "sampling_seconds": rec.sampling_seconds, "recording_seconds": rec.recording_seconds,
            "draws_per_second": cfg.chains * cfg.draws / max(rec.sampling_seconds, 1e-12),
            "recording_fraction": rec.recording_seconds / max(rec.sampling_seconds, 1e-12),
            "train_loss_trace": rec.train_trace.tolist(), "query_loss_trace": rec.query_trace.tolist(),
            "config": asdict(cfg),
        }
        path = ctx.cache_dir / f"bif-diagnostics-seed{ctx.seed}.json"
        try:
            path.write_text(json.dumps(self.diagnostics, default=str))
            self.diagnostics["plot"] = plot_traces(rec.train_trace, path.with_suffix(".png"))
        except OSError:   # diagnostics are a by-product: a read-only cache must not lose the scores
            pass
