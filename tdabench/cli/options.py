"""The options the ``tdabench`` subcommands share, and their parsing: the run options, seeds, names, the
spec a command's arguments make, and the results table."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional

from tdabench.api.config import ConfigError, parse_set_args
from tdabench.toolkit import threads


def add_common(p: argparse.ArgumentParser) -> None:
    """The options shared by the commands that run methods (run, ground-truth, sweep, scaling)."""
    p.add_argument("--task", required=p.prog.split()[-1] not in ("run", "plan"), help="task name (see `tdabench list`)")
    p.add_argument("--seeds", default="3", help="number of seeds S (seeds 0..S-1), or a list like 0,4,7")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SCOPE.KEY=VALUE",
                   help="override a setting: task.KEY, gt.KEY (kind, alpha, num_subsets, retrain_seeds, "
                        "loo_examples), store.KEY (dtype, topk, max_mb) or METHOD.KEY")
    p.add_argument("--metric", default="", help="metric name(s), comma-separated (default: every metric of the "
                                                "ground truth's kind: lds for subsets, loo for leave-one-out)")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="where caches and records go")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--serial", action="store_true", help="retrain in this process without Ray (debugging)")
    p.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 matmuls (faster, ~3 fewer digits; keys the ground truth)")
    p.add_argument("--nondeterministic", action="store_true", help="CUDA: allow nondeterministic kernels (14%% faster CIFAR-10 training on an H200; recorded)")
    p.add_argument("--no-plan", action="store_true", help="CUDA: skip the memory plan traced before any work")
    p.add_argument("--plan-unfinished", choices=("refuse", "accept"), default="refuse",
                   help="a memory plan with a stage it could not trace to its end: refuse it (default), or accept "
                        "it on the finished stages' word")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch CPU threads for every stage in this process (default: one for training a model under "
                        f"{threads.PARALLEL_FROM:,} parameters, otherwise as many as there are idle cores; "
                        f"toolkit/threads.py)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of failures)")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"`` → (0, 1, 2); ``"0,4,7"`` → (0, 4, 7)."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s) if "," in text else ()
        count = int(text) if "," not in text else 0
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a comma-separated list (0,4,7)") from None
    if seeds:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:   # a repeated seed is the same repetition twice: its SE would be a false 0
            raise ConfigError(f"--seeds {text!r}: seed(s) {', '.join(map(str, repeated))} repeated; each seed is one "
                              f"whole repetition, so list each once (e.g. {','.join(map(str, sorted(set(seeds))))})")
        return seeds
    if count < 1:
        raise ConfigError(f"--seeds {text!r}: a single number is a count of seeds (3 means seeds 0, 1, 2); for seed 0 "
                          f"alone give --seeds 1, for other seeds list them (--seeds 4,7)")
    return tuple(range(count))


def names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (text or "").split(",") if n)


def spec_from_args(args: argparse.Namespace, methods: tuple[str, ...]) -> Any:
    from tdabench.engine.spec import RunSpec

    return RunSpec(task=args.task, methods=methods, seeds=parse_seeds(args.seeds), overrides=parse_set_args(args.sets),
                   results_dir=args.results_dir, device=args.device, executor="serial" if args.serial else "ray",
                   ray_address=args.ray_address, force=getattr(args, "force", False),
                   update_board=getattr(args, "update_board", False), metrics=names(args.metric),
                   deterministic=not args.nondeterministic, tf32=args.tf32,
                   check_memory=not getattr(args, "no_plan", False),
                   plan_unfinished=getattr(args, "plan_unfinished", "refuse"))


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(summaries: list[dict[str, Any]]) -> str:
    """One table per (task, ground truth, metric): method, mean ± SE, per seed, fraction of the noise
    ceiling, fit s, score s, peak MB."""
    blocks = []
    for task, label, metric in dict.fromkeys((s["task"], s["ground_truth"], s["metric"]) for s in summaries):
        rows = [("method", f"{metric} (mean ± SE)", "per seed", "of ceiling", "fit s", "score s", "peak MB")]
        chosen = [s for s in summaries if (s["task"], s["ground_truth"], s["metric"]) == (task, label, metric)]
        for s in chosen:
            rows.append((s["method"], f"{fmt(s['mean'])} ± {fmt(s['se'])}", " ".join(fmt(v) for v in s["per_seed"]),
                         fmt(s["fraction_of_ceiling"], 2), fmt(s["fit_seconds"], 2), fmt(s["score_seconds"], 2),
                         f"{s['peak_rss_mb']:.0f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{task} — ground truth: {label}; metric: {metric}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(2, "  ".join("-" * w for w in widths))
        ceiling = next((s["ceiling"] for s in chosen if s["ceiling"] is not None), None)
        lines.append(f"noise ceiling (Spearman–Brown corrected, of the mean over retraining seeds): {fmt(ceiling)}"
                     if ceiling is not None else f"noise ceiling: {chosen[0]['ceiling_note']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
