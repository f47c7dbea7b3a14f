"""MNIST-1D's reference models against the package's published accuracy: the models the board's `mnist1d`
rows attribute, trained as the pipeline trains them (every one of the 4,000 training signals, seeds 0..S-1),
and their accuracy on the 1,000 test signals, beside Greydanus's README figures (MLP 68 %, CNN 94 %).

    python benchmarks/mnist1d_accuracy.py [--seeds 3] [--readme]

``--readme`` writes ``results/benchmarks/mnist1d_accuracy.md`` and the README's ``bench:mnist1d_accuracy``
block.  Each training run's wall-clock is printed too (1 thread; say whether the machine was quiet).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from tdabench.api.seeds import reference_seed
from tdabench.engine.spec import make_task

PUBLISHED = {"mlp": 0.68, "cnn": 0.94}     # the mnist1d README's table ("MLP 68%, CNN 94%")


def accuracy(model_name: str, seed: int) -> tuple[float, float, float]:
    """(test accuracy, training accuracy, seconds) of the reference model of ``seed``."""
    task = make_task("mnist1d", {"model": model_name}, torch.device("cpu"))
    task.train_data()                                   # the data build is not part of the training time
    start = time.perf_counter()
    model = task.make_model(reference_seed(seed))                  # as tdabench.engine.reference trains seed's model
    model = task.train(model, torch.arange(task.n_train), reference_seed(seed)).eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        acc = [float((task.outputs(model, data).argmax(1) == data[1]).float().mean())
               for data in (task.query_data(), task.train_data())]
    return acc[0], acc[1], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--readme", action="store_true", help="write the table into the README and results/benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, detail = [], []
    for name in ("mlp", "cnn"):
        runs = [accuracy(name, s) for s in range(args.seeds)]
        test = [r[0] for r in runs]
        se = statistics.stdev(test) / len(test) ** 0.5 if len(test) > 1 else float("nan")
        rows.append(f"| {name} | {PUBLISHED[name]:.0%} | {statistics.mean(test):.1%} ± {se:.1%} | "
                    f"{' / '.join(f'{t:.1%}' for t in test)} | {statistics.mean(r[1] for r in runs):.1%} |")
        detail += [f"{name} seed {s}: test {r[0]:.4f}, train {r[1]:.4f}, {r[2]:.1f} s" for s, r in enumerate(runs)]
        print(rows[-1], flush=True)
    table = "\n".join(["| model | published test accuracy | tdabench reference models (mean ± SE) | per seed | "
                       "training accuracy |", "|---|---|---|---|---|", *rows])
    print("\n".join(detail))
    if args.readme:
        from _readme import publish
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        publish("mnist1d_accuracy", table, f"Per run (1 thread; load average at the end {load} on "
                f"{os.cpu_count()} cores: above 1, other work shared the machine and the seconds are slower):"
                "\n\n```\n" + "\n".join(detail) + "\n```")


if __name__ == "__main__":
    main()
