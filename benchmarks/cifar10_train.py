"""cifar10 retrain cost: training throughput (images/s), the time of one full retrain (fresh model,
warmup phase, training, query measurement — the unit of ground-truth work) and the test accuracy.

    python benchmarks/cifar10_train.py [--set n_train=45000 --set epochs=8] [--repeats 3] [--device cuda]
    python benchmarks/cifar10_train.py --random-data      # random uint8 images of CIFAR shape (no files needed)
    python benchmarks/cifar10_train.py --device cuda --nondeterministic   # the cost of deterministic kernels

Real data come from task.data_dir / $TDABENCH_CIFAR10_DIR as for `tdabench run`.  The first retrain
also pays one-off costs (cuDNN autotuning, lazy imports) and is reported separately.
"""
from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tdabench.api.config import apply_overrides, parse_set_args
from tdabench.toolkit.numerics import Numerics
from tdabench.engine.spec import pick_device
from tdabench.tasks.cifar10 import TRAIN_FILES, Cifar10, Cifar10Config


def write_random_cifar(root: Path, seed: int = 0) -> None:
    """Random images and labels in the archive's on-disk layout (50,000 train, 10,000 test)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in TRAIN_FILES + ("test_batch",):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, 10000).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"%d" % i for i in range(10)]}, f)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_retrain(task: Cifar10, seed: int, alpha: float) -> tuple[float, float, float, int]:
    """Train on a random α-subset as the ground truth does: (seconds of train(), seconds of the whole
    retrain incl. model and measurement, test accuracy, subset size)."""
    gen = torch.Generator().manual_seed(seed)
    subset = (torch.rand(task.n_train, generator=gen) < alpha).nonzero().squeeze(1) if alpha < 1 else torch.arange(task.n_train)
    sync(task.device)
    start = time.perf_counter()
    model = task.make_model(seed)
    sync(task.device)
    t0 = time.perf_counter()
    task.train(model, subset.to(task.device), seed)
    sync(task.device)
    t1 = time.perf_counter()
    task.measure(model, task.query_data())
    sync(task.device)
    total = time.perf_counter() - start
    x, y = task.query_data()
    model.eval()
    with torch.no_grad():
        correct = sum(int((task.outputs(model, (xb, yb)).argmax(1) == yb).sum())
                      for xb, yb in zip(x.split(2000), y.split(2000)))
    return t1 - t0, total, correct / len(y), subset.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="task config, e.g. n_train=45000")
    parser.add_argument("--repeats", type=int, default=3, help="timed retrains after the first (seeds 1..R)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--alpha", type=float, default=0.5, help="subset fraction per retrain (1: whole attribution set)")
    parser.add_argument("--random-data", action="store_true", help="random uint8 data of CIFAR shape (accuracy ≈ 10%%)")
    parser.add_argument("--nondeterministic", action="store_true", help="CUDA: allow nondeterministic kernels (cuDNN autotuning)")
    parser.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 matmuls and convolutions")
    args = parser.parse_args()
    overrides = parse_set_args([f"task.{s}" for s in args.set]).get("task", {})
    tmp = tempfile.TemporaryDirectory()
    if args.random_data:
        write_random_cifar(Path(tmp.name))
        overrides |= {"data_dir": tmp.name, "verify": "false", "download": "false"}
    config = apply_overrides(Cifar10Config(), overrides, "task")
    device = pick_device(args.device)
    numerics = Numerics(device=device.type, deterministic=not args.nondeterministic, tf32=args.tf32)
    numerics.apply()   # the settings `tdabench run` uses (deterministic, no TF32 by default)
    task = Cifar10(config, device=device)
    start = time.perf_counter()
    task.train_data()
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
          f"data loaded in {time.perf_counter() - start:.1f}s; N={task.n_train}, queries={task.n_query}, "
          f"epochs={config.epochs}, warmup {config.warmup_steps} steps, size {config.image_size}, widths {config.widths}; "
          f"{numerics.key()}")
    warm_images = config.warmup_steps * min(config.batch_size, config.warmup_size) if config.warmup_size else 0
    cold = one_retrain(task, 0, args.alpha)
    print(f"first retrain (one-off costs included): train {cold[0]:.2f}s, retrain {cold[1]:.2f}s, accuracy {cold[2]:.4f}")
    runs = [one_retrain(task, s, args.alpha) for s in range(1, args.repeats + 1)]
    if runs:
        train_s, total_s, acc, sizes = (np.array(v) for v in zip(*runs))
        images = warm_images + config.epochs * sizes
        print(f"{args.repeats} retrains on α={args.alpha} subsets (~{sizes.mean():,.0f} images): train "
              f"{train_s.mean():.2f}s ± {train_s.std():.2f} ({(images / train_s).mean():,.0f} images/s incl. "
              f"{warm_images:,} warmup images per run), full retrain {total_s.mean():.2f}s, "
              f"test accuracy {acc.mean():.4f} ± {acc.std():.4f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
