"""Could ``if``'s damping be chosen without a ground truth?  What the best damping looks like per task (issue 34).

For each task and seed, ``if``'s scores are built on the Gauss-Newton eigenbasis of the reference model
(as ``benchmarks/if_curvature.py`` does) at λ = r·λ_max for r on a fine grid from 1e-5 to 3, and scored on
the tuning half of the ground truth.  At the best r the script prints three quantities a rule could be
built on without a ground truth — λ/λ_max, λ over the mean eigenvalue, and the effective dimension
Σ e/(e + λ) — and, for a trust-region rule ("removing half the data must not move θ further than
training did"), the shift (G + λI)⁻¹·(1/n)Σ_{i∈S} g_i for random halves S at the smallest λ, over
|θ − θ₀|.  A rule works if its quantity stays put across tasks while the best λ moves.

    python benchmarks/damping_rules.py [--tasks unseen,digits] [--seeds 3] [--readme]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unseen_tasks import FAMILY, registered  # noqa: E402

from methods.exact_if import objective_gauss_newton  # noqa: E402
from tdabench.engine import pipeline  # noqa: E402
from tdabench.engine.groundtruth import load_ground_truth  # noqa: E402
from tdabench.engine.spec import RunSpec  # noqa: E402
from tdabench.engine.tuning import split_lds  # noqa: E402
from tdabench.toolkit.grads import per_example_grads, select_params  # noqa: E402

GRID = [10 ** (k / 4) for k in range(-20, 3)]   # λ/λ_max from 1e-5 to about 3
HALVES = 16


def seed_row(spec: RunSpec, plan, seed: int, results: Path) -> dict[str, float]:
    task, method = plan.task, plan.methods[1]
    truth = load_ground_truth(task, plan.gt, seed, results)
    ctx = pipeline.make_context(spec, task, method, seed)
    params = select_params(ctx.model, ())
    e, v = torch.linalg.eigh(objective_gauss_newton(task, ctx.model, ctx.train_data, params, 64))
    e = e.clamp_min(0)
    a = per_example_grads(ctx.model, task.loss, ctx.train_data, params, 64).double() @ v          # [n, d]
    b = v.T @ per_example_grads(ctx.model, task.measurement, ctx.query_data, params, 64).double().T  # [d, q]
    n, top = ctx.n_train, float(e[-1])
    start = dict(task.make_model(ctx.train_seed).named_parameters())
    travelled = math.sqrt(sum(float(((p.detach() - start[k].detach()).double() ** 2).sum()) for k, p in params.items()))
    gen = torch.Generator().manual_seed(0)
    halves = torch.stack([a[torch.randperm(n, generator=gen)[: n // 2]].sum(0) for _ in range(HALVES)]) / n
    curve = [(r, split_lds((-(a / (e + r * top)) @ b / n).float(), truth, seed)) for r in GRID]
    r, (tune, held) = max(curve, key=lambda c: c[1][0])
    lam = r * top
    return {"r": r, "lam/mean": lam / float(e.mean()), "deff": float((e / (e + lam)).sum()), "held": held,
            "shift": float((halves / (e + GRID[0] * top)).norm(dim=1).median()) / travelled}


def run_task(label: str, task: str, overrides: dict, seeds: int, results: Path) -> list[str]:
    spec = RunSpec(task=task, methods=("random", "if"), seeds=tuple(range(seeds)), results_dir=results,
                   records_dir=Path(tempfile.mkdtemp()), executor="serial",
                   overrides={"task": overrides, "gt": {"retrain_seeds": "2"}})
    pipeline.evaluate(spec.replace(methods=("random",)))                  # builds (or loads) the ground truth
    plan = pipeline.prepare(spec)
    rows = [seed_row(spec, plan, s, results) for s in spec.seeds]

    def span(key: str, fmt: str) -> str:
        values = [r[key] for r in rows]
        return f"{min(values):{fmt}}–{max(values):{fmt}}"

    line = (f"| {label} | {span('r', '.2g')} | {span('lam/mean', '.3g')} | {span('deff', '.1f')} | "
            f"{span('shift', '.2f')} | {span('held', '.3f')} |")
    print(line, flush=True)
    return [line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="unseen,digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--readme", action="store_true", help="write results/benchmarks/damping_rules.md and its docs block")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted = args.tasks.split(",")
    table = [f"At the damping best on the tuning half (λ = r·λ_max of the Gauss-Newton matrix), range over "
             f"{args.seeds} seeds (`benchmarks/damping_rules.py --readme`): what a rule without a ground truth could "
             f"hold fixed, and the trust region's predicted shift at r = 1e-5 over ‖θ − θ₀‖", "",
             "| task | best r | λ / mean eigenvalue | effective dimension | shift / ‖θ − θ₀‖ at r = 1e-5 | held-out LDS |",
             "|---|---|---|---|---|---|"]
    with registered():
        if "unseen" in wanted:
            scratch = Path(tempfile.mkdtemp(prefix="unseen-"))
            for name, settings in FAMILY:
                table += run_task(name, "unseen", {k: str(v) for k, v in settings.items()}, args.seeds, scratch)
        if "digits" in wanted:
            table += run_task("digits", "digits", {}, args.seeds, Path("results"))
    print("\n".join(table))
    if args.readme:
        from _readme import publish

        publish("damping_rules", "\n".join(table), "")


if __name__ == "__main__":
    main()
