"""tdabench's local BIF against devinterp 2.0.1's on the same task, reference model, minibatch size,
hyperparameters and parameter restriction; prints draws per second (loss recording included) for
both, their ratio, the correlation of the two BIF matrices, and the peak memory of the trace and
streaming estimators.

On a language task (tinylm, pythia) devinterp's own ``devinterp.slt.bif.bif()`` runs end to end: it
samples with its RMSprop-SGLD, records every attribution and query sequence's per-token losses at
each draw into its zarr store, and computes the sequence-level covariance (``compute_covariance``).
On other tasks (its ``bif()`` takes only ``input_ids`` datasets) devinterp's ``SGMCMC`` optimizer
makes the SGLD steps and tdabench's recording observes the draws.

    pip install devinterp==2.0.1 torch==2.13.0
    python benchmarks/bif_vs_devinterp.py --task tinylm --threads 1 [--self-check] [--chains 4 --draws 100]
        [--set task.n_train=500 --set bif.batch_size=50 ...]
    python benchmarks/bif_vs_devinterp.py --task digits [--sampler rmsprop] [--draws 200]

Settings not given are the task's BIF defaults (``tdabench list``).

The two samplers draw different noise (and minibatches), so their matrices agree only up to Monte-Carlo
error: the correlation printed is between two independent estimates of one quantity.  Runs of
tdabench's BIF with different seeds give the reference level of that agreement (``--self-check``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")     # devinterp's per-chain progress bars (read when tqdm is imported)

import torch  # noqa: E402

from tdabench.api.config import parse_set_args  # noqa: E402
from tdabench.toolkit.grads import select_params  # noqa: E402
from tdabench.toolkit.meter import Meter  # noqa: E402
from tdabench.engine.pipeline import make_context  # noqa: E402
from tdabench.engine.spec import RunSpec, make_method, make_task, pick_device  # noqa: E402
from tdabench.toolkit.sgld import StreamingEstimator, TraceEstimator, covariance, minibatch  # noqa: E402
from tdabench.api.task import take  # noqa: E402


def devinterp_optimizer_bif(ctx, cfg) -> tuple[torch.Tensor, float, float]:
    """−Cov(ℓ_i, φ_j) with devinterp's optimizer doing the SGLD steps and tdabench recording;
    (scores, total seconds, sampling seconds)."""
    from devinterp.optim.sgmcmc import SGMCMC
    from tdabench.methods.bif import record

    task, data = ctx.task, ctx.task.fit_data()
    params = list(select_params(ctx.model, cfg.patterns).values())
    center = [p.detach().clone() for p in params]
    gen_batch, gen_noise = torch.Generator().manual_seed(1), torch.Generator(device=ctx.device).manual_seed(2)
    est, n = TraceEstimator(), int(data[0].shape[0])
    start = time.perf_counter()
    for _ in range(cfg.chains):
        with torch.no_grad():
            for p, c in zip(params, center):
                p.copy_(c)
        common = dict(lr=cfg.epsilon, nbeta=cfg.nbeta, localization=cfg.gamma)
        opt = (SGMCMC.rmsprop_sgld(params, alpha=cfg.rms_alpha, eps=cfg.rms_delta, **common)
               if cfg.sampler == "rmsprop" else SGMCMC.sgld(params, **common))
        for step in range(1, cfg.burn_in + cfg.draws * cfg.thin + 1):
            idx = minibatch(n, cfg.batch_size, gen_batch)
            opt.zero_grad()
            value = task.loss(ctx.model, data if idx is None else take(data, idx)).mean() + task.regularizer(ctx.model)
            value.backward()
            opt.step(noise_generator=gen_noise)
            after = step - cfg.burn_in
            if after > 0 and after % cfg.thin == 0:
                est.add(record(ctx.model, task.loss, ctx.train_data, cfg.record_batch_size),
                        record(ctx.model, task.measurement, ctx.query_data, cfg.record_batch_size))
    sampled = time.perf_counter() - start
    scores = -covariance(est).float()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for p, c in zip(params, center):
            p.copy_(c)
    return scores, seconds, sampled


class _SampleTime(logging.Handler):
    """Catches devinterp's "sample() total time: X seconds" log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"sample\(\) total time: ([\d.]+) seconds", record.getMessage())
        if match:
            self.seconds = float(match.group(1))


def _rows_to_indices(rows: torch.Tensor, ids: torch.Tensor, what: str) -> torch.Tensor:
    """For each row of ``rows`` (input_ids devinterp reports), its index in ``ids`` (tdabench's order)."""
    where: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(ids.tolist()):
        where.setdefault(tuple(row), []).append(i)
    out = [where[tuple(row)].pop() for row in rows.tolist()]
    if sorted(out) != list(range(ids.shape[0])):
        raise RuntimeError(f"devinterp's {what} observable does not cover every {what} sequence once")
    return torch.tensor(out)


def devinterp_lm_bif(ctx, cfg, workdir: Path) -> tuple[torch.Tensor, float, float]:
    """devinterp's ``bif()`` on the task's attribution and query sequences, sequence-level covariance,
    the same parameters sampled; (scores −Cov [n_train, n_query] in tdabench's order, total s, sampling s)."""
    from datasets import Dataset
    from devinterp.slt.bif import bif

    train, query, fit = ctx.train_data[0], ctx.query_data[0], ctx.task.fit_data()[0]
    b = cfg.batch_size
    for what, n in (("n_train", train.shape[0]), ("n_query", query.shape[0])):
        if n % b:
            raise SystemExit(f"devinterp's bif() records an observable in whole batches of its SGLD batch size: "
                             f"bif.batch_size={b} must divide task.{what}={n} (e.g. --set bif.batch_size=50)")
    if cfg.aggregation != "sequence" or cfg.estimator != "covariance" or cfg.noise != 1.0:
        raise SystemExit("the comparison runs bif.aggregation=sequence, bif.estimator=covariance, bif.noise=1")
    if float(ctx.task.regularizer(ctx.model)) != 0.0:
        raise SystemExit(f"task {ctx.task.name} has a regulariser, which devinterp's bif() has no place for")

    def as_dataset(ids: torch.Tensor) -> Dataset:
        return Dataset.from_dict({"input_ids": ids.cpu().tolist()}).with_format("torch")

    masks = {name: None for name in select_params(ctx.model, cfg.patterns)}   # None: the whole tensor
    timer = _SampleTime()
    log = logging.getLogger("devinterp.slt.sampling")
    log.addHandler(timer)
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        result = bif(
            ctx.model, as_dataset(fit), {"train": (as_dataset(train), train.shape[0] // b),
                                         "query": (as_dataset(query), query.shape[0] // b)},
            lr=cfg.epsilon, n_beta=cfg.nbeta, localization=cfg.gamma, param_masks=masks,
            sampling_method="rmsprop_sgld" if cfg.sampler == "rmsprop" else "sgmcmc_sgld",
            **(dict(rmsprop_eps=cfg.rms_delta, rmsprop_alpha=cfg.rms_alpha) if cfg.sampler == "rmsprop" else {}),
            num_chains=cfg.chains, num_draws=cfg.draws, num_burnin_steps=cfg.burn_in,
            num_steps_bw_draws=cfg.thin, batch_size=b, num_init_loss_batches=1,
            correlation_method="sequence", compute_covariance=True,
            device=str(ctx.device), bif_device=str(ctx.device), output_path=workdir / "samples.zarr")
        influences = torch.as_tensor(result["influences"].values)             # shape: [n_q + n_t, n_q + n_t]
        rows = torch.as_tensor(result["input_ids"].values)                     # shape: [n_q + n_t, context]
    finally:
        log.removeHandler(timer)
    seconds = time.perf_counter() - start
    # observables are concatenated in sorted name order: "query" then "train"
    nq = query.shape[0]
    q_idx = _rows_to_indices(rows[:nq], query.cpu(), "query")
    t_idx = _rows_to_indices(rows[nq:], train.cpu(), "train")
    scores = torch.empty(train.shape[0], nq)
    scores[t_idx[:, None], q_idx[None, :]] = -influences[nq:, :nq].float()
    return scores, seconds, timer.seconds if timer.seconds is not None else float("nan")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def estimator_peak_mb(mode: str, n_draws: int, p: int, q: int, device: torch.device) -> float:
    """Peak memory above the start (RSS, or CUDA on GPU) of feeding ``n_draws`` random draws to one
    estimator and computing its covariance, measured in a fresh process (memory that this process
    freed but its allocator kept would hide a smaller estimator's growth)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_estimator_peak_mb, (mode, n_draws, p, q, str(device)))


def _estimator_peak_mb(mode: str, n_draws: int, p: int, q: int, device_name: str) -> float:
    device = torch.device(device_name)
    gen = torch.Generator(device=device).manual_seed(0)

    def feed(n: int, p: int, q: int) -> None:
        est = TraceEstimator() if mode == "trace" else StreamingEstimator()
        for _ in range(n):
            est.add(torch.randn(p, generator=gen, device=device), torch.randn(q, generator=gen, device=device))
        covariance(est)

    feed(100, 8, 8)                    # first-use initialisation (kernels, BLAS buffers) is not the estimator's
    base = _rss_mb() if device.type == "cpu" else 0.0
    with Meter(device) as meter:
        feed(n_draws, p, q)
    usage = meter.usage
    return usage.peak_cuda_mb if usage.peak_cuda_mb is not None else usage.peak_rss_mb - base


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--via", default="auto", choices=["auto", "bif", "optimizer"],
                    help="devinterp's bif() (language tasks; auto picks it there) or its SGMCMC optimizer")
    ap.add_argument("--sampler", default=None, choices=["rmsprop", "sgld"], help="default: the task's BIF default")
    ap.add_argument("--chains", type=int, default=None, help="default: the task's BIF default")
    ap.add_argument("--draws", type=int, default=None, help="default: the task's BIF default")
    ap.add_argument("--set", action="append", default=[], metavar="SCOPE.KEY=VALUE",
                    help="task.KEY or bif.KEY, as for tdabench run")
    ap.add_argument("--seed", type=int, default=0, help="reference model and tdabench's sampler seed")
    ap.add_argument("--self-check", action="store_true",
                    help="also run tdabench's BIF with seed+1 noise: the agreement two independent runs reach")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest for tiny models)")
    ap.add_argument("--results-dir", default=None, help="reuse reference models cached here (default: temporary)")
    ap.add_argument("--memory-shape", default="5000,500,4000", help="n_train,n_query,draws of the memory test")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_set_args(args.set)
    unknown = set(overrides) - {"task", "bif"}
    if unknown:
        raise SystemExit(f"--set scopes are task. and bif., not {sorted(unknown)}")
    device = pick_device(args.device)
    task = make_task(args.task, overrides.get("task", {}), device)
    given = {k: str(v) for k, v in (("sampler", args.sampler), ("chains", args.chains), ("draws", args.draws)) if v}
    bif = make_method("bif", task, {"memory": "trace", **given, **overrides.get("bif", {})})
    via = args.via if args.via != "auto" else ("bif" if task.has_token_measurement else "optimizer")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.results_dir) if args.results_dir else Path(tmp) / "results"
        ctx = make_context(RunSpec(task=args.task, methods=("bif",), results_dir=results), task, bif, args.seed)
        start = time.perf_counter()
        ours = bif.score(ctx)
        ours_s = time.perf_counter() - start
        if via == "bif":
            theirs, theirs_s, theirs_sampling = devinterp_lm_bif(ctx, bif.config, Path(tmp))
        else:
            theirs, theirs_s, theirs_sampling = devinterp_optimizer_bif(ctx, bif.config)
        again = None
        if args.self_check:
            again = bif.score(dataclasses.replace(ctx, seed=args.seed + 1))   # same w*, other noise
    cfg = bif.config
    n_draws = cfg.chains * cfg.draws
    what = "devinterp.slt.bif.bif()" if via == "bif" else "devinterp SGMCMC optimizer + tdabench recording"
    print(f"task {args.task} (n_train {ctx.n_train}, n_query {ctx.n_query}), sampler {cfg.sampler}, "
          f"{cfg.chains}x{cfg.draws} draws (+{cfg.burn_in} burn-in), batch {cfg.batch_size}, eps {cfg.epsilon:g}, "
          f"nbeta {cfg.nbeta:g}, gamma {cfg.gamma:g}, {sum(p.numel() for p in select_params(ctx.model, cfg.patterns).values())} "
          f"sampled parameters, device {device}, threads {torch.get_num_threads()}")
    print(f"devinterp : {what}")
    print(f"tdabench  : {n_draws / ours_s:8.1f} draws/s ({ours_s:.2f} s, recording and covariance included)")
    x = bif.extras()        # the run record's own account of the sampling (methods/bif.py)
    print(f"tdabench  : sampling {x['sampling_seconds']:.2f} s ({x['draws_per_second']:.1f} draws/s), of which "
          f"recording the losses {x['recording_seconds']:.2f} s ({100 * x['recording_fraction']:.0f} %)")
    print(f"devinterp : {n_draws / theirs_s:8.1f} draws/s ({theirs_s:.2f} s, recording and covariance included; "
          f"sampling with recording {theirs_sampling:.2f} s)")
    print(f"speed ratio tdabench/devinterp: {theirs_s / ours_s:.2f}")
    print(f"correlation of the two BIF matrices: {_corr(ours, theirs):.3f}")
    if again is not None:
        print(f"correlation of two tdabench runs (seeds {args.seed}, {args.seed + 1}): {_corr(ours, again):.3f}")
    p, q, d = (int(v) for v in args.memory_shape.split(","))
    for mode in ("trace", "streaming"):
        print(f"estimator {mode:9s} peak {estimator_peak_mb(mode, d, p, q, device):8.1f} MB "
              f"(n_train {p}, n_query {q}, {d} draws)")


if __name__ == "__main__":
    main()
