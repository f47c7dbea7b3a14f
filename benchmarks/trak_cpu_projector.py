"""EK-FAC fit/score seconds and TRAK featurize throughput on the CPU, for the digits MLP and a small
CNN on the same images (about 282k parameters).

    pip install --no-deps kronfluence==1.0.1 && pip install traker==0.3.2 ...   (see the README)
    python benchmarks/trak_cpu_projector.py [--proj-dim 2048] [--examples 256]

TRAK is timed four ways on the CNN, each featurizing the same examples at the same projection width:
tdabench's path (SeededProjector: the matrix generated once), traker with its default CPU settings
(BasicProjector, which regenerates its matrix in blocks of 100 columns for every batch, the reference
of the ratios), tdabench with the sparse JL projection (`trak.projector=sparse`), and traker with one
block (fast, but finalize_features frees the matrix and scoring then fails — shown).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from tdabench.toolkit.grads import num_params, select_params
from tdabench.api.method import Context
from tdabench.engine.reference import reference_model
from tdabench.engine.spec import make_method
from tdabench.api.task import Batch, batches
from tdabench.tasks.digits import Digits, DigitsConfig


class DigitsCNN(Digits):
    """The digits task with a two-convolution CNN on the 8×8 images (not registered)."""

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(64 * 64, 64), nn.ReLU(), nn.Linear(64, 10)).to(self.device)


def context(task: Digits, root: Path) -> Context:
    model, _, key = reference_model(task, 0, root)
    cache = root / "cache" / task.name / type(task).__name__
    cache.mkdir(parents=True, exist_ok=True)
    return Context(task=task, model=model, train_data=task.train_data(), query_data=task.query_data(),
                   device=task.device, seed=0, cache_dir=cache, model_key=key)


def time_ekfac(ctx: Context) -> tuple[float, float, float]:
    """(first fit, score, second fit with the cached factors) seconds."""
    method = make_method("ekfac", ctx.task, {})
    start = time.perf_counter()
    method.fit(ctx)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    method.score(ctx)
    score = time.perf_counter() - start
    again = make_method("ekfac", ctx.task, {})
    start = time.perf_counter()
    again.fit(ctx)
    return fit, score, time.perf_counter() - start


def featurize_rate(traker, model: nn.Module, data: Batch, batch_size: int) -> float:
    """Examples per second of traker.featurize over ``data`` (one model)."""
    traker.load_checkpoint(model.state_dict(), model_id=0)
    start = time.perf_counter()
    for b in batches(data, batch_size):
        traker.featurize(batch=b, num_samples=b[0].shape[0])
    return data[0].shape[0] / (time.perf_counter() - start)


def time_trak(ctx: Context, proj_dim: int, examples: int, batch_size: int) -> None:
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    from tdabench.methods.trak import SeededProjector, TaskOutput, gradient_computer

    model, data = ctx.model, tuple(t[:examples] for t in ctx.train_data)
    d = num_params(select_params(model))
    common = dict(train_set_size=examples, device="cpu", proj_dim=proj_dim, use_half_precision=False,
                  logging_level=logging.WARNING)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, tempfile.TemporaryDirectory() as c, \
            tempfile.TemporaryDirectory() as e:
        ours = TRAKer(model=model, task=TaskOutput(ctx.task.loss), save_dir=a, gradient_computer=gradient_computer(()),
                      projector=SeededProjector(d, proj_dim, 0, ctx.device), **common)
        start = time.perf_counter()
        ours.projector.project(torch.zeros(1, d), model_id=0)          # the one-time matrix generation
        print(f"tdabench projection matrix {d:,}×{proj_dim}: generated once in {time.perf_counter() - start:.1f} s")
        fast = featurize_rate(ours, model, data, batch_size)
        stock = featurize_rate(TRAKer(model=model, task="image_classification", save_dir=b, **common),
                               model, data, batch_size)
        print(f"TRAK featurize, {d:,} parameters, k={proj_dim}: tdabench {fast:.1f} examples/s (matrix held), "
              f"traker default {stock:.1f} examples/s, ratio {fast / stock:.1f}x")
        sparse = TRAKer(model=model, task=TaskOutput(ctx.task.loss), save_dir=e, gradient_computer=gradient_computer(()),
                        projector=SeededProjector(d, proj_dim, 0, ctx.device, kind="sparse", nnz=2), **common)
        start = time.perf_counter()
        sparse.projector.project(torch.zeros(1, d), model_id=0)        # the one-time CSR matrix
        built = time.perf_counter() - start
        rate = featurize_rate(sparse, model, data, batch_size)
        print(f"TRAK featurize, sparse JL projection (trak.projector=sparse, nnz=2; built in {built:.1f} s): "
              f"{rate:.1f} examples/s, {rate / stock:.1f}x traker default, {rate / fast:.1f}x tdabench dense")
        one_block = BasicProjector(grad_dim=d, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.normal,
                                   device="cpu", block_size=proj_dim)
        plain = TRAKer(model=model, task="image_classification", save_dir=c, projector=one_block, **common)
        rate = featurize_rate(plain, model, data, batch_size)
        plain.finalize_features()
        plain.start_scoring_checkpoint("q", model.state_dict(), model_id=0, num_targets=4)
        try:
            plain.score(batch=tuple(t[:4] for t in ctx.query_data), num_samples=4)
            print(f"traker one-block projector: {rate:.1f} examples/s, scoring works")
        except AttributeError as err:
            print(f"traker one-block projector: {rate:.1f} examples/s, then score() fails: {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--examples", type=int, default=256, help="examples featurized per TRAK variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the reference models")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for cls in (Digits, DigitsCNN):
            ctx = context(cls(DigitsConfig(epochs=args.epochs)), Path(tmp) / cls.__name__)
            fit, score, again = time_ekfac(ctx)
            print(f"EK-FAC {cls.__name__} ({num_params(select_params(ctx.model)):,} parameters, "
                  f"{ctx.n_train}×{ctx.n_query}): fit {fit:.2f} s, score {score:.2f} s, cached fit {again:.3f} s")
        time_trak(ctx, args.proj_dim, args.examples, args.batch_size)


if __name__ == "__main__":
    main()
