"""Time and peak memory of every stage of one `tdabench run`, measured stage by stage in one process:
building the task (its data and base model), one retrain on an α-subset (the unit of ground-truth
work), measuring the queries, the reference model, and each method's fit and score.  The figures a
memory plan must predict.

    python benchmarks/stage_costs.py --task digits --method gradsim,ekfac
    python benchmarks/stage_costs.py --task cifar10 --set task.data_dir=DIR --method bif,ekfac,gradsim --device cuda
    python benchmarks/stage_costs.py --task pythia --set task.model_name=DIR --set task.data=FILE --method gradsim,ekfac,bif

Peak memory: CUDA's allocator peak on a GPU; the process's resident-set high-water mark on the CPU.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from tdabench.api.config import parse_set_args
from tdabench.toolkit.meter import Meter, Usage
from tdabench.toolkit.numerics import Numerics
from tdabench.engine.pipeline import fit_and_score, make_context
from tdabench.toolkit.retrain import subset_masks
from tdabench.engine.spec import RunSpec, make_method, make_task, pick_device


def row(stage: str, usage: Usage) -> dict:
    """One printed and recorded line: seconds and the peak memory that counts on this device."""
    peak = usage.peak_cuda_mb if usage.peak_cuda_mb is not None else usage.peak_rss_mb
    print(f"{stage:<28} {usage.seconds:>9.2f} s {peak:>11,.0f} MB "
          f"{'(CUDA peak)' if usage.peak_cuda_mb is not None else '(peak RSS)'}", flush=True)
    return {"stage": stage, "seconds": usage.seconds, "peak_mb": peak, "cuda": usage.peak_cuda_mb is not None}


def task_stages(task, device: torch.device, alpha: float) -> list[dict]:
    """One retrain on an α-subset, and measuring every query on the trained model."""
    rows = []
    indices = subset_masks(task.n_train, alpha, 1, 0)[0].nonzero().squeeze(1).to(device)
    with Meter(device) as m:
        model = task.make_model(1)
        task.train(model, indices, 1)
    rows.append(row(f"retrain (α={alpha}, {indices.numel()} ex.)", m.usage))
    with Meter(device) as m:
        task.measure(model, task.query_data())
    rows.append(row(f"measure ({task.n_query} queries)", m.usage))
    return rows


def method_stages(spec: RunSpec, task, overrides: dict) -> list[dict]:
    """The reference model once, then each method's fit and score as `tdabench run` calls them."""
    rows = []
    for name in spec.methods:
        method = make_method(name, task, overrides.get(name, {}))
        with Meter(task.device) as m:
            ctx = make_context(spec, task, method, 0)
        if m.usage.seconds > 1 or name == spec.methods[0]:
            rows.append(row(f"reference model ({name})", m.usage))
        scored = fit_and_score(method, ctx)
        rows += [row(f"{name} fit", scored.fit), row(f"{name} score", scored.score)]
        del method, ctx, scored
        if task.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--method", default="", help="comma-separated methods (empty: the task's stages only)")
    parser.add_argument("--set", action="append", default=[], metavar="SCOPE.KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--nondeterministic", action="store_true", help="CUDA: allow nondeterministic kernels")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    overrides = parse_set_args(args.set)
    device = pick_device(args.device)
    Numerics(device=device.type, deterministic=not args.nondeterministic).apply()
    with Meter(device) as built:               # loading (or preparing) the data and the base model
        task = make_task(args.task, overrides.get("task", {}), device)
        task.train_data(), task.query_data()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"task {args.task} on {device} ({name}); N={task.n_train}, queries={task.n_query}", flush=True)
    rows = [row("build the task (data, model)", built.usage)] + task_stages(task, device, args.alpha)
    with tempfile.TemporaryDirectory() as tmp:
        methods = tuple(m for m in args.method.split(",") if m)
        spec = RunSpec(task=args.task, methods=methods, results_dir=Path(tmp), device=args.device)
        rows += method_stages(spec, task, overrides)
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "device": name, "overrides": overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
