"""Whether a cost plan fits a device, and how long it takes there: device memory, the headroom kept
for CUDA, the refusal message, and the sustained throughput measured per task on known GPUs."""
from __future__ import annotations

import math

import torch

from tdabench.plan.costplan import CostPlan, GiB


#: Kept free on a CUDA device beyond the traced tensors: the CUDA context, cuBLAS/cuDNN workspaces and
#: the caching allocator's slack.
CUDA_HEADROOM = 2 * GiB


def device_memory(device: str) -> int:
    """Bytes of memory of ``device`` on this machine (a GPU's total; the CPU's physical memory)."""
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_properties(d).total_memory
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024


def usable(plan: CostPlan, memory_bytes: int) -> int:
    """What the traced tensors may use of ``memory_bytes`` on the plan's device."""
    return memory_bytes - (CUDA_HEADROOM if plan.device.startswith("cuda") else 0)


def unfinished(plan: CostPlan) -> list[str]:
    """The stages the trace could not finish, each with why: not traced at all (its peak unknown), or
    stopped at the operator budget (its peak only a lower bound, its time unknown)."""
    out = []
    for s in plan.stages:
        if s.peak_bytes is None:
            out.append(f"{s.stage} not traced ({s.note or 'no note'})")
        elif s.partial:
            out.append(f"{s.stage} ≥ {s.peak_bytes / 2**20:,.0f} MB (stopped at the operator budget; --trace-ops 0 "
                       f"traces it whole)")
    return out


def refusal(plan: CostPlan, memory_bytes: int, accept_unfinished: bool = False) -> str:
    """'' when every stage was traced to its end and fits ``memory_bytes``; else what is over (and which
    settings to lower) or unfinished.  ``accept_unfinished``: judge by the finished stages alone."""
    lines = []
    open_stages = [] if accept_unfinished else unfinished(plan)
    if open_stages:
        lines.append(f"cannot say the run fits: {len(open_stages)} stage(s) not traced to their end — "
                     + "; ".join(open_stages) + " (--plan-unfinished=accept judges by the finished stages alone)")
    over = plan.over(usable(plan, memory_bytes))
    if over:
        keep = f" (keeping {CUDA_HEADROOM // GiB} GB for the CUDA context)" if plan.device.startswith("cuda") else ""
        lines.append(f"does not fit in {memory_bytes / GiB:.0f} GB{keep}: " + "; ".join(
            f"{s.stage}: {s.peak_bytes / GiB:.1f} GB" + (f" — lower {s.settings}" if s.settings else "") for s in over))
    if not lines:
        return ""
    return f"{plan.task} on {plan.device}: " + "; ".join(lines) + " (`tdabench plan` shows every stage; --no-plan skips this check)"


#: Sustained throughput of a retrain on known GPUs, in TFLOP/s: the traced FLOPs of one retrain divided
#: by its measured seconds (README, "Measured on a GPU": CIFAR-10's 73.2 TFLOP in 0.63 s of training;
#: Pythia-14M's shapes, 97.9 TFLOP in 11 s — a 128-wide model keeps the GPU far from its peak).
MEASURED_TFLOPS: dict[tuple[str, str], float] = {("NVIDIA H200", "cifar10"): 116.0, ("NVIDIA H200", "pythia"): 8.9}


def sustained_tflops(device: str, task: str = "") -> tuple[float, str]:
    """(TFLOP/s, where the figure comes from) for the time estimate of ``task`` on ``device``: measured
    for that task on that GPU when known, else the slowest rate measured on it (or on any GPU)."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else ""
        if (name, task) in MEASURED_TFLOPS:
            return MEASURED_TFLOPS[(name, task)], f"measured for {task} on {name}"
        if not name and (hit := [(gpu, v) for (gpu, t), v in MEASURED_TFLOPS.items() if t == task]):
            return hit[0][1], f"measured for {task} on {hit[0][0]} (no GPU here)"
        same = [(v, k) for k, v in MEASURED_TFLOPS.items() if k[0] == name] or [(v, k) for k, v in MEASURED_TFLOPS.items()]
        rate, (gpu, known) = min(same)
        return rate, f"assumed: the slowest rate measured, {known} on {gpu}; times may be 10x too long"
    return _cpu_tflops(), "this CPU's float32 matmul rate; small models run far slower"


def _cpu_tflops() -> float:
    """Best of three 1024² float32 matmuls on this machine's CPU threads."""
    import time

    a = torch.randn(1024, 1024)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return round(2 * 1024**3 / best / 1e12, 3)
