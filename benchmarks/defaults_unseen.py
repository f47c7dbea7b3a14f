"""Every method at its defaults on the unseen family (``tests/unseen_tasks.py``: small non-convex
MLPs that no default was chosen on), against ``random`` on the same ground truth — issue 34's check
that defaults hold on a task nobody tuned for.  Prints, per task, each method's LDS (mean ± SE over
seeds) and its margin over random in combined SEs; ``✗`` marks a margin of 2 or less.

    python benchmarks/defaults_unseen.py [--methods gradsim,if,...] [--seeds 3] [--tuned] [--readme]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from unseen_tasks import FAMILY, registered  # noqa: E402

from tdabench.engine import pipeline  # noqa: E402
from tdabench.engine.records import combined_se  # noqa: E402
from tdabench.api.registry import METHODS  # noqa: E402
from tdabench.engine.spec import RunSpec  # noqa: E402



def applicable(settings: dict[str, object]) -> list[str]:
    """The methods whose own ``check`` accepts the task (what ``run`` refuses before any work)."""
    from tdabench.engine.spec import make_method
    from unseen_tasks import Unseen, UnseenConfig

    task, out = Unseen(UnseenConfig(**settings)), []
    for name in METHODS.names():
        try:
            make_method(name, task, {}).check(task)
            out.append(name)
        except Exception as err:  # the method's own refusal
            print(f"{name}: not applicable ({str(err).splitlines()[0][:90]})")
    return [m for m in out if m != "random"]


def tuned(spec: RunSpec, method: str) -> str:
    """The method with its tunable setting at ``auto``: its held-out LDS and what it chose, per seed."""
    key = next(iter(METHODS.get(method).tunable), None)
    if key is None:
        return "—"
    outcomes: list[pipeline.Outcome] = []
    summaries, failures = pipeline.evaluate(spec.replace(methods=(method,), overrides={
        **spec.overrides, method: {key: "auto"}}), outcomes)
    row = next((s for s in summaries if s["metric"] == "lds"), None)
    if row is None:
        return "failed: " + "; ".join(failures)[:80]
    chosen = [json.loads(o.record.read_text())["extras"]["auto"]["chosen"] for o in outcomes]
    return f"{row['mean']:.3f} ± {row['se']:.3f} ({key} {'/'.join(chosen)})"


def measure(methods: list[str], seeds: int, scratch: Path, with_tuned: bool) -> tuple[list[str], dict[str, dict[str, str]]]:
    lines, cells = [], {}
    for name, settings in FAMILY:
        spec = RunSpec(task="unseen", methods=("random", *methods), seeds=tuple(range(seeds)), results_dir=scratch,
                       executor="serial", overrides={"task": {k: str(v) for k, v in settings.items()},
                                                     "gt": {"retrain_seeds": "2"}})
        start = time.perf_counter()
        summaries, failures = pipeline.evaluate(spec)
        rows = {s["method"]: s for s in summaries if s["metric"] == "lds"}
        base = rows["random"]
        first = len(lines)
        lines.append(f"\n### {name} ({', '.join(f'{k}={v}' for k, v in settings.items())}; "
                     f"{time.perf_counter() - start:.0f} s)\n\n| method | LDS | margin over random (SEs) | tuned: held-out LDS (choice per seed) |"
                     f"\n|---|---|---|---|")
        for method in methods:
            row = rows.get(method)
            if row is None:
                lines.append(f"| {method} | failed | {next((f for f in failures if f.startswith(method)), '')} |")
                continue
            margin = (row["mean"] - base["mean"]) / max(combined_se(row, base), 1e-6)
            mark = "" if margin > 2 else " ✗"
            best = tuned(spec, method) if with_tuned else "—"
            cells.setdefault(method, {})[name] = f"{row['mean']:.3f}{mark} / {best.split(' ± ')[0]}"
            lines.append(f"| {method} | {row['mean']:.3f} ± {row['se']:.3f} | {margin:.1f}{mark} | {best} |")
        print("\n".join(lines[first:]), flush=True)
    return lines, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tuned", action="store_true", help="also each method with its tunable setting at auto")
    parser.add_argument("--readme", action="store_true",
                        help="write results/benchmarks/defaults_unseen.md and the README's block from this run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with registered():
        methods = args.methods.split(",") if args.methods else applicable(dict(FAMILY[0][1]))
        lines, cells = measure(methods, args.seeds, Path(tempfile.mkdtemp(prefix="unseen-")), args.tuned)
    if args.readme:
        from _readme import publish

        names = [name for name, _ in FAMILY]
        table = [f"LDS at each method's defaults (mean over {args.seeds} seeds, α=0.5, K=100, R=2; ✗: not above random "
                 f"by more than 2 combined SEs) / with its tunable setting at `auto` (held-out half); "
                 f"`benchmarks/defaults_unseen.py --tuned --readme`, SEs and choices in its output\n",
                 "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        table += [f"| {m} | " + " | ".join(cells.get(m, {}).get(n, "failed") for n in names) + " |" for m in methods]
        publish("defaults_unseen", "\n".join(table), "\n".join(lines))


if __name__ == "__main__":
    main()
