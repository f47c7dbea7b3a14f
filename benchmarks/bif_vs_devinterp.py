"""tdabench's local BIF against the same estimator driven by devinterp 2.0.1's SGMCMC optimizers:
same task, reference model, minibatches, hyperparameters and loss recording; prints draws per second
(recording included) for both, their ratio, the correlation of the two BIF matrices, and the peak
memory of the trace and streaming estimators.

    pip install devinterp==2.0.1 torch==2.13.0
    python benchmarks/bif_vs_devinterp.py [--task digits] [--sampler rmsprop] [--chains 4 --draws 200]

The two samplers draw different noise, so their matrices agree only up to Monte-Carlo error: the
correlation printed is between two independent estimates of one quantity.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tdabench.grads import select_params
from tdabench.measure import Meter
from tdabench.runner import RunSpec, make_context, make_method, make_task, pick_device
from tdabench.sgld import StreamingEstimator, TraceEstimator, covariance, minibatch
from tdabench.task import take


def devinterp_bif(ctx, cfg) -> tuple[torch.Tensor, float]:
    """−Cov(ℓ_i, φ_j) with devinterp's optimizer doing the SGLD steps and tdabench recording; (scores, s)."""
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
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for p, c in zip(params, center):
            p.copy_(c)
    return -covariance(est).float(), seconds


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def estimator_peak_mb(mode: str, n_draws: int, p: int, q: int, device: torch.device) -> float:
    """Peak memory above the start (RSS, or CUDA on GPU) of feeding ``n_draws`` random draws to one
    estimator and computing its covariance."""
    gen = torch.Generator(device=device).manual_seed(0)
    base = _rss_mb() if device.type == "cpu" else 0.0
    with Meter(device) as meter:
        est = TraceEstimator() if mode == "trace" else StreamingEstimator()
        for _ in range(n_draws):
            est.add(torch.randn(p, generator=gen, device=device), torch.randn(q, generator=gen, device=device))
        covariance(est)
    usage = meter.usage
    return usage.peak_cuda_mb if usage.peak_cuda_mb is not None else usage.peak_rss_mb - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--sampler", default="rmsprop", choices=["rmsprop", "sgld"])
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--memory-shape", default="5000,500,4000", help="n_train,n_query,draws of the memory test")
    args = ap.parse_args()
    device = pick_device(args.device)
    task = make_task(args.task, {}, device)
    bif = make_method("bif", task, {"sampler": args.sampler, "chains": str(args.chains), "draws": str(args.draws),
                                    "memory": "trace"})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = make_context(RunSpec(task=args.task, methods=("bif",), results_dir=Path(tmp)), task, bif, 0)
        start = time.perf_counter()
        ours = bif.score(ctx)
        ours_s = time.perf_counter() - start
        theirs, theirs_s = devinterp_bif(ctx, bif.config)
    n_draws = args.chains * args.draws
    corr = float(torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]).double())[0, 1])
    print(f"task {args.task}, sampler {args.sampler}, {args.chains}x{args.draws} draws, device {device}")
    print(f"tdabench  : {n_draws / ours_s:8.1f} draws/s ({ours_s:.2f} s)")
    print(f"devinterp : {n_draws / theirs_s:8.1f} draws/s ({theirs_s:.2f} s)")
    print(f"speed ratio tdabench/devinterp: {theirs_s / ours_s:.2f}")
    print(f"correlation of the two BIF matrices: {corr:.3f}")
    p, q, d = (int(v) for v in args.memory_shape.split(","))
    for mode in ("trace", "streaming"):
        print(f"estimator {mode:9s} peak {estimator_peak_mb(mode, d, p, q, device):8.1f} MB "
              f"(n_train {p}, n_query {q}, {d} draws)")


if __name__ == "__main__":
    main()
