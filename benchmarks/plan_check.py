"""The memory plan against the run: `tdabench plan`'s traced peak and time of every stage next to the
stage really run in the same process (benchmarks/stage_costs.py), with their ratio — the planner's
error.  On CUDA the measured peak is the allocator's; on the CPU the process's RSS high-water mark,
which includes Python, libraries and the data loaded on the host, so there only the trend is
comparable.

    python benchmarks/plan_check.py --task digits --method gradsim,ekfac
    python benchmarks/plan_check.py --task cifar10 --set task.data_dir=DIR --set task.n_query=1000 --method gradsim,ekfac --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_costs import method_stages, row, task_stages  # noqa: E402

from tdabench.api.config import apply_overrides, parse_set_args  # noqa: E402
from tdabench.plan.capacity import sustained_tflops  # noqa: E402
from tdabench.plan.costplan import TRACE_OPS, GiB, trace  # noqa: E402
from tdabench.engine.groundtruth import GroundTruthConfig  # noqa: E402
from tdabench.toolkit.meter import Meter  # noqa: E402
from tdabench.toolkit.numerics import Numerics  # noqa: E402
from tdabench.engine.spec import RunSpec, make_method, make_task, pick_device  # noqa: E402

#: planned stage → the measured stage's label prefix in stage_costs.py
MATCH = {"retrain": "retrain", "measure": "measure", "reference model": "reference model"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--method", default="")
    parser.add_argument("--set", action="append", default=[], metavar="SCOPE.KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trace-ops", type=int, default=TRACE_OPS, help="operators per traced stage (0: no limit)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    overrides, device = parse_set_args(args.set), pick_device(args.device)
    Numerics(device=device.type, deterministic=True).apply()
    methods = tuple(m for m in args.method.split(",") if m)
    probe = make_task(args.task, overrides.get("task", {}), device)
    built = [make_method(m, probe, overrides.get(m, {})) for m in methods]
    gt = apply_overrides(GroundTruthConfig(), overrides.get("gt", {}), "gt")
    start = time.perf_counter()
    plan = trace(lambda d: make_task(args.task, overrides.get("task", {}), d), built, gt, str(device), 1, args.trace_ops)
    traced_s = time.perf_counter() - start
    rate = sustained_tflops(str(device), args.task)[0]
    print(f"plan traced in {traced_s:.1f} s on the {plan.traced_on} path", flush=True)
    with Meter(device) as built_usage:
        task = make_task(args.task, overrides.get("task", {}), device)
        task.train_data(), task.query_data()
    measured = [row("build the task (data, model)", built_usage.usage)] + task_stages(task, device, gt.alpha)
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(task=args.task, methods=methods, results_dir=Path(tmp), device=args.device)
        measured += method_stages(spec, task, overrides)
    out = []
    print(f"\n{'stage':<22} {'planned GB':>10} {'measured GB':>11} {'ratio':>6} {'planned s':>10} {'measured s':>10}")
    for s in plan.stages:
        got = next((m for m in measured if m["stage"].startswith(MATCH.get(s.stage, s.stage))), None)
        if got is None or s.peak_bytes is None:
            print(f"{s.stage:<22} {'?' if s.peak_bytes is None else s.peak_bytes / GiB:>10} {s.note[:100]}")
            continue
        planned_gb, got_gb = s.peak_bytes / GiB, got["peak_mb"] / 1024
        planned_s = s.flops / (rate * 1e12) if s.flops else float("nan")
        print(f"{s.stage:<22} {planned_gb:>10.2f} {got_gb:>11.2f} {planned_gb / max(got_gb, 1e-9):>6.2f} "
              f"{planned_s:>10.2f} {got['seconds']:>10.2f}")
        out.append({"stage": s.stage, "planned_gb": planned_gb, "measured_gb": got_gb, "flops": s.flops,
                    "planned_s": planned_s, "measured_s": got["seconds"], "note": s.note})
    if args.json:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        args.json.write_text(json.dumps({"task": args.task, "device": name, "traced_on": plan.traced_on,
                                         "trace_seconds": traced_s, "tflops": rate, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
