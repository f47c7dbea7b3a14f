"""The ``tdabench`` command line: run, ground-truth, list."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .config import ConfigError, field_docs, field_summary, parse_set_args
from .registry import METHODS, TASKS, UnknownNameError

log = logging.getLogger("tdabench")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=p.prog.split()[-1] != "run", help="task name (see `tdabench list`)")
    p.add_argument("--seeds", default="3", help="number of seeds S (seeds 0..S-1), or a list like 0,4,7")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SCOPE.KEY=VALUE",
                   help="override a setting: task.KEY, gt.KEY (alpha, num_subsets, retrain_seeds) or METHOD.KEY")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="where caches and records go")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--serial", action="store_true", help="retrain in this process without Ray (debugging)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for fit and score in this process (tiny models run fastest on 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of failures)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdabench", description="Training-data attribution benchmark (LDS).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="score methods on a task: ground truth, reference model, fit, score, LDS")
    _common(run)
    run.add_argument("--method", help="method name(s), comma-separated")
    run.add_argument("--suite", help="run a named suite of the papers' experiments instead (see `tdabench list`)")
    run.add_argument("--json", action="store_true", help="print only a JSON array of summaries on stdout")
    run.add_argument("--force", action="store_true", help="recompute records that already exist")
    gt = sub.add_parser("ground-truth", help="build (or complete) the ground-truth caches only")
    _common(gt)
    sub.add_parser("list", help="tasks, methods and suites with their settings and defaults")
    board = sub.add_parser("leaderboard", help="render the leaderboard from run records")
    board.add_argument("--task", default=None, help="only this task")
    board.add_argument("--format", default="md", choices=("md", "csv", "latex", "json"))
    board.add_argument("--results-dir", type=Path, default=Path("results"))
    board.add_argument("--output", type=Path, default=None, help="also write the board to this file")
    sw = sub.add_parser("sweep", help="tune a method's settings on Ray Tune; report the held-out LDS")
    _common(sw)
    sw.add_argument("--method", required=True, help="one method name")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="candidate values of a setting")
    sw.add_argument("--samples", type=int, default=0, help="random search with N draws (default: the full grid)")
    sc = sub.add_parser("scaling", help="fit/score seconds and peak memory as a setting grows; exponents and plot")
    _common(sc)
    sc.add_argument("--method", required=True, help="method name(s), comma-separated")
    sc.add_argument("--vary", required=True, metavar="[SCOPE.]FIELD=V1,V2,V3", help="the setting to grow")
    pl = sub.add_parser("plot", help="draw LDS, cost and per-query plots from the run records")
    pl.add_argument("--task", default=None, help="only this task")
    pl.add_argument("--results-dir", type=Path, default=Path("results"))
    reg = sub.add_parser("regress", help="CI check: rerun committed settings, compare with committed baselines")
    reg.add_argument("--baselines", type=Path, default=Path("results/baselines/regress.json"))
    reg.add_argument("--results-dir", type=Path, default=Path("results"))
    reg.add_argument("--update-baselines", action="store_true", help="rewrite the baselines with this run's numbers")
    reg.add_argument("--serial", action="store_true", help="retrain in this process without Ray")
    return parser


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"`` → (0, 1, 2); ``"0,4,7"`` → (0, 4, 7)."""
    try:
        if "," in text:
            return tuple(int(s) for s in text.split(",") if s)
        count = int(text)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a comma-separated list (0,4,7)") from None
    if count < 1:
        raise ConfigError(f"--seeds {text!r}: at least one seed is needed")
    return tuple(range(count))


def _spec(args: argparse.Namespace, methods: tuple[str, ...]) -> Any:
    from .runner import RunSpec

    return RunSpec(task=args.task, methods=methods, seeds=parse_seeds(args.seeds), overrides=parse_set_args(args.sets),
                   results_dir=args.results_dir, device=args.device, executor="serial" if args.serial else "ray",
                   ray_address=args.ray_address, force=getattr(args, "force", False))


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(summaries: list[dict[str, Any]]) -> str:
    """The run table: method, LDS mean ± SE, per-seed LDS, fit s, score s, peak MB."""
    rows = [("method", "LDS (mean ± SE)", "per seed", "fit s", "score s", "peak MB")]
    for s in summaries:
        rows.append((s["method"], f"{_fmt(s['lds_mean'])} ± {_fmt(s['lds_se'])}",
                     " ".join(_fmt(v) for v in s["lds_per_seed"]), _fmt(s["fit_seconds"], 2),
                     _fmt(s["score_seconds"], 2), f"{s['peak_rss_mb']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ceilings = [s["noise_ceiling"] for s in summaries if "noise_ceiling" in s]
    if ceilings:
        lines.append(f"noise ceiling (half the retraining seeds predicting the other half): {_fmt(ceilings[0])}")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    if args.suite:
        summaries, failures = run_suite(args)
    elif not (args.task and args.method):
        raise ConfigError("run needs --task and --method (or --suite NAME)")
    else:
        summaries, failures = run(_spec(args, tuple(m for m in args.method.split(",") if m)))
    if args.json:
        print(json.dumps(_json_safe(summaries), indent=1))
    else:
        print(format_table(summaries))
    for failure in failures:
        log.error("failed: %s", failure)
    return 1 if failures else 0


def run_suite(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Every step of a suite; a failing step is collected and the next one still runs."""
    from .presets import get_suite
    from .runner import run
    from .scaling import scaling_study

    suite = get_suite(args.suite)
    summaries: list[dict[str, Any]] = []
    failures: list[str] = []
    for i, step in enumerate(suite.steps, 1):
        log.info("suite %s step %d/%d: %s %s on %s", suite.name, i, len(suite.steps), step.kind,
                 ",".join(step.methods), step.task)
        ns = argparse.Namespace(**{**vars(args), "task": step.task, "seeds": str(step.seeds),
                                   "sets": [*step.sets, *args.sets]})
        try:
            if step.kind == "run":
                got, errors = run(_spec(ns, step.methods))
                summaries += got
                failures += errors
            else:
                study = scaling_study(_spec(ns, step.methods), step.vary)
                log.info("scaling study written to %s and %s", study["json"], study["plot"])
        except Exception as err:  # one bad step must not lose the others
            failures.append(f"step {i} ({step.task}: {','.join(step.methods)}): {type(err).__name__}: {err}")
    return summaries, failures


def cmd_ground_truth(args: argparse.Namespace) -> int:
    from .groundtruth import build_ground_truth
    from .runner import _LazyExecutor, validate

    spec = _spec(args, ())
    task, _, gt = validate(spec)
    executor = _LazyExecutor(spec)
    try:
        for seed in spec.seeds:
            truth = build_ground_truth(task, gt, seed, spec.results_dir, executor)
            ceiling = truth.noise_ceiling
            print(f"seed {seed}: {truth.replicas.shape[1]} subsets × {truth.replicas.shape[0]} retraining seeds, "
                  f"key {truth.key}" + (f", noise ceiling {ceiling:.3f}" if ceiling is not None else ""))
    finally:
        executor.close()
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    from .presets import SUITES

    for title, registry in (("tasks", TASKS), ("methods", METHODS)):
        print(f"{title}:")
        for name in registry.names():
            cls = registry.get(name)
            print(f"  {name:<12} {cls.description}")
            docs = field_docs(cls.Config)
            for field, tp, default in field_summary(cls.Config):
                doc = f"  # {docs[field]}" if docs.get(field) else ""
                print(f"      {field} ({tp}) = {default!r}{doc}")
        for label, err in registry.broken.items():
            print(f"  ! {label} failed to import: {err}")
    print("suites (tdabench run --suite NAME):")
    for suite in SUITES.values():
        print(f"  {suite.name:<20} {suite.description}")
        for step in suite.steps:
            extra = f" vary {step.vary}" if step.vary else ""
            print(f"      {step.kind} {step.task} [{','.join(step.methods)}] seeds={step.seeds} {' '.join(step.sets)}{extra}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import leaderboard

    text = leaderboard(args.results_dir, args.task, args.format)
    print(text, end="")
    if args.output:
        args.output.write_text(text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepSpec, parse_grid, sweep

    if "," in args.method:
        raise ConfigError("sweep takes one --method at a time")
    if not args.grid:
        raise ConfigError("sweep needs at least one --grid KEY=V1,V2,...")
    spec = _spec(args, (args.method,))
    report = sweep(SweepSpec(run=spec, grid=parse_grid(args.grid, args.method), samples=args.samples))
    print(f"{'tuning-split LDS':>16}  config")
    for trial in report["trials"]:
        print(f"{_fmt(trial['tune_lds']):>16}  {trial['config']}")
    print(f"chosen on the tuning split: {report['chosen']}; held-out LDS {_fmt(report['heldout_lds'])} ± "
          f"{_fmt(report['heldout_se'])} over {len(report['seeds'])} seed(s)  [{report['path']}]")
    for failure in report["failures"]:
        log.error("trial failed: %s", failure)
    return 1 if report["failures"] else 0


def cmd_scaling(args: argparse.Namespace) -> int:
    from .scaling import scaling_study

    study = scaling_study(_spec(args, tuple(m for m in args.method.split(",") if m)), args.vary)
    print(f"{study['task']}: cost against {study['field']}")
    for method, points in study["points"].items():
        for p in points:
            print(f"  {method:<10} {p['setting']:>14}  fit {p['fit_seconds']:8.3f} s  score {p['score_seconds']:8.3f} s"
                  f"  peak {p['peak_rss_mb']:8.0f} MB")
        e = study["exponents"][method]
        print(f"  {method:<10} growth exponents: fit {e['fit_seconds']:.2f}, score {e['score_seconds']:.2f}, "
              f"peak memory {e['peak_rss_mb']:.2f}")
    print(f"wrote {study['json']}\nwrote {study['plot']}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plots
    from .leaderboard import group, load_records

    records = load_records(args.results_dir, args.task)
    if not records:
        raise FileNotFoundError(f"no run records under {args.results_dir / 'runs'}; run `tdabench run` first")
    rows, folder = group(records), args.results_dir / "plots"
    for task in sorted({r.task for r in records}):
        for path in (plots.lds_bars(rows, task, folder / f"{task}-lds.png"),
                     plots.lds_vs_cost(rows, task, folder / f"{task}-lds-vs-cost.png"),
                     plots.per_query(records, task, folder / f"{task}-per-query.png")):
            print(f"wrote {path}")
    for rec in records:
        if "train_loss_trace" in rec.extras:
            print(f"wrote {plots.loss_traces(rec, folder / f'{rec.task}-{rec.method}-seed{rec.seed}-traces.png')}")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from .regress import regress

    report, failures = regress(args.baselines, args.results_dir, args.update_baselines,
                               "serial" if args.serial else "ray")
    print("\n".join(report))
    for failure in failures:
        print(f"REGRESSION: {failure}", file=sys.stderr)
    print(f"{len(report)} checks, {len(failures)} failures", file=sys.stderr)
    return 1 if failures else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, format="[tdabench %(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    log.setLevel(level)   # our own level: kronfluence sets the root logger's level to its log_level (WARNING)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    handlers = {"run": cmd_run, "ground-truth": cmd_ground_truth, "list": cmd_list,
                "leaderboard": cmd_leaderboard, "regress": cmd_regress, "sweep": cmd_sweep,
                "scaling": cmd_scaling, "plot": cmd_plot}
    try:
        return handlers[args.command](args)
    except (UnknownNameError, ConfigError, PermissionError, ImportError, FileNotFoundError, ValueError,
            RuntimeError) as err:
        print(f"tdabench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
