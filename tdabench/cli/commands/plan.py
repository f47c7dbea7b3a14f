"""``tdabench plan``: the peak memory, FLOPs and time of every stage of a run, before any work."""
from __future__ import annotations

import argparse
import math
import re
from typing import Any, Optional

from tdabench.cli.options import add_common, parse_seeds
from tdabench.api.config import ConfigError, parse_set_args
from tdabench.cli.commands.base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", default="", help="method name(s), comma-separated (with --suite: planned in every "
                                                "run step besides the suite's own, where they can serve its task)")
    p.add_argument("--suite", help="plan every run step of a named suite instead")
    p.add_argument("--device-memory", type=float, default=None, metavar="GB",
                   help="memory of the device to plan for (default: this machine's device; 80 for CUDA without one)")
    p.add_argument("--trace-ops", type=int, default=None, metavar="N",
                   help="operators one stage's trace may run (default 100,000, about a minute or two); 0: no limit")
    p.add_argument("--tflops", type=float, default=None,
                   help="sustained TFLOP/s for the time estimate (default: measured for known devices)")


def planned_device(device: str) -> str:
    """``--device`` as planned: auto is CUDA when present, else the CPU."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"--device {device!r}: plan for auto, cpu or cuda[:N] (a CUDA device is planned without one "
                          f"here; --device-memory GB sets its memory)")
    return "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device


def plan_spec(task_name: str, methods: tuple[str, ...], overrides: dict[str, dict[str, str]], seeds: int,
              device: str, memory_gb: Optional[float], tflops: Optional[float],
              trace_ops: Optional[int] = None, accept_unfinished: bool = False) -> tuple[Any, str, bool]:
    """Trace one run and return (plan, its printed table, whether it is refused)."""
    import torch

    from tdabench.plan.capacity import device_memory, refusal, sustained_tflops
    from tdabench.plan.costplan import TRACE_OPS, trace
    from tdabench.engine.groundtruth import GroundTruthConfig
    from tdabench.api.config import apply_overrides
    from tdabench.engine.spec import check_scopes, make_task, resolve_method

    wanted = planned_device(device)
    check_scopes(overrides, methods)
    probe = make_task(task_name, overrides.get("task", {}), torch.device(wanted))   # configs only: loads nothing
    built = [resolve_method(m, probe, overrides.get(m, {}))[0] for m in methods]
    gt = apply_overrides(GroundTruthConfig(), overrides.get("gt", {}), "gt")
    if trace_ops is not None and trace_ops < 0:
        raise ConfigError(f"--trace-ops {trace_ops}: must be ≥ 0 (0: no limit; default {TRACE_OPS:,})")
    if memory_gb is not None and not memory_gb > 0:
        raise ConfigError(f"--device-memory {memory_gb}: must be a positive number of GB, e.g. 80")
    if tflops is not None and not tflops > 0:
        raise ConfigError(f"--tflops {tflops}: must be a positive number, e.g. 100")
    plan = trace(lambda d: make_task(task_name, overrides.get("task", {}), d), built, gt, wanted, seeds,
                 TRACE_OPS if trace_ops is None else trace_ops)
    have_device = not wanted.startswith("cuda") or torch.cuda.is_available()
    memory = int(memory_gb * 2**30) if memory_gb else device_memory(wanted) if have_device else 80 * 2**30
    rate, source = (tflops, "--tflops") if tflops else sustained_tflops(wanted, task_name)
    refused = refusal(plan, memory, accept_unfinished)
    return plan, table(plan, memory, rate, source, refused), bool(refused)


def table(plan: Any, memory: int, rate: float, source: str, refused: str) -> str:
    """The plan as printed: one row per stage, the total time, and whether it fits."""
    from tdabench.plan.capacity import GiB, unfinished, usable

    rows = [("stage", "peak MB", "GFLOP each", "runs", "time", "memory set by")]
    for s in plan.stages:
        peak = "?" if s.peak_bytes is None else ("≥ " if s.partial else "") + f"{s.peak_bytes / 2**20:,.0f}"
        rows.append((s.stage, peak, f"{s.flops / 1e9:,.1f}" if s.flops else "—", f"{s.count:,}",
                     hours(s.flops * s.count / (rate * 1e12)) if s.flops else "—", s.settings or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"plan: {plan.task} on {plan.device}" + ("" if plan.traced_on.split(":")[0] == plan.device.split(":")[0]
             else f" (traced on the {plan.traced_on} path: GPU-only code such as bf16 autocast not taken, memory an upper bound)")]
    lines += ["  ".join(c.rjust(w) if 0 < i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    lines += [f"  {s.stage}: {s.note}" for s in plan.stages if s.note and (s.peak_bytes is None or s.partial)]
    untimed = [s.stage for s in plan.stages if s.peak_bytes is None or s.partial]
    lines.append(f"total {'≥' if untimed else '≈'} {hours(plan.total_flops / (rate * 1e12))} at {rate:g} TFLOP/s sustained "
                 f"({source})" + (f"; without {', '.join(untimed)}, not traced to the end" if untimed else ""))
    peak = max((s.peak_bytes for s in plan.stages if s.peak_bytes is not None), default=0)
    accepted = f" on the finished stages' word ({len(unfinished(plan))} unfinished, accepted)" if unfinished(plan) else ""
    lines.append(refused or f"fits{accepted}: largest stage {peak / GiB:.2f} GB of {usable(plan, memory) / GiB:.0f} GB "
                            f"usable ({memory / GiB:.0f} GB device)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tdabench.studies.presets import get_suite

    if not (args.suite or args.task):
        raise ConfigError("plan needs --task (and --method) or --suite NAME")
    steps = _steps(args, get_suite) if args.suite else [(args.task, _methods(args.method), args.sets, args.seeds)]
    worst = 0
    for task, methods, sets, seeds in steps:
        if args.suite:
            kept = _serving(task, methods, parse_set_args(sets), args.device)
            sets = [s for s in sets if s.split(".", 1)[0] not in set(methods) - set(kept)]   # the left-out's settings
            methods = kept
        plan, text, refused = plan_spec(task, methods, parse_set_args(sets), len(parse_seeds(seeds)), args.device,
                                        args.device_memory, args.tflops, args.trace_ops, args.plan_unfinished == "accept")
        print(text + "\n")
        worst = max(worst, 1 if refused else 0)
    return worst


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m for m in (text or "").split(",") if m)
    if text and not methods:
        raise ConfigError(f"--method {text!r} names no method; give one or more, e.g. --method gradsim,ekfac")
    return methods


def _steps(args: argparse.Namespace, get_suite: Any) -> list[tuple[str, tuple[str, ...], list[str], str]]:
    """The run steps of a suite as (task, methods, --set list, seeds), with ``--method``'s methods added to
    each; other step kinds are skipped."""
    suite = get_suite(args.suite)
    runs = [s for s in suite.steps if s.kind == "run"]
    if not runs:
        raise ConfigError(f"suite {suite.name} has no run steps to plan (its steps: "
                          f"{', '.join(s.kind for s in suite.steps)})")
    extra = _methods(args.method)
    return [(s.task, tuple(dict.fromkeys((*s.methods, *extra))), [*s.sets, *args.sets], str(s.seeds)) for s in runs]


def _serving(task_name: str, methods: tuple[str, ...], overrides: dict[str, dict[str, str]],
             device: str) -> tuple[str, ...]:
    """The methods that can serve the step's task; each one that cannot is named with its reason."""
    import torch

    from tdabench.engine.spec import make_task, resolve_method

    probe = make_task(task_name, overrides.get("task", {}), torch.device(planned_device(device)))   # configs only
    kept = []
    for name in methods:
        try:
            resolve_method(name, probe, overrides.get(name, {}))[0].check(probe)
            kept.append(name)
        except (ConfigError, ValueError) as refused:
            print(f"plan: {name} not planned on {task_name}: {refused}")
    return tuple(kept)


def hours(seconds: float) -> str:
    """``seconds`` as s, min or h."""
    if not math.isfinite(seconds):
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


COMMAND = Command("plan", "peak memory, FLOPs and time of every stage of a run, traced on fake tensors before any work",
                  run, add_arguments)
