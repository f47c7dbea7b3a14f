"""BIF's recording in bfloat16 against float32 on tinylm (issue 38): LDS and speed.

LDS: the board's tinylm ``bif`` row (float32, its committed records) against the same run with
``bif.record_dtype=bfloat16`` (same spec, ground truth, seeds; its records in a scratch folder, never
the board's).  Speed: BIF on tinylm's seed-0 reference model at ``--chains × --draws`` draws, both
dtypes alternating in this process (``--rounds``), with the records' own account of where the time
went (draws/s, share spent recording).

    python benchmarks/bif_record_dtype.py [--threads 1] [--rounds 2] [--chains 2 --draws 25] [--readme]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from tdabench.engine import pipeline
from tdabench.engine.records import RunResult
from tdabench.engine.reproduce import spec_for
from tdabench.engine.spec import make_method
from tdabench.toolkit.lds import mean_se

RESULTS = Path("results")


def board_records() -> list[RunResult]:
    """The committed default tinylm bif records (float32), one per seed."""
    for folder in sorted((RESULTS / "runs" / "tinylm" / "bif").iterdir()):
        records = [RunResult.load(p) for p in sorted(folder.glob("seed*.json"))]
        if records and records[0].method_config.get("record_dtype", "float32") == "float32" \
                and records[0].method_config.get("epsilon") != "auto":
            return records
    raise SystemExit("no tinylm bif records under results/runs: run `tdabench board` first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=25)
    parser.add_argument("--readme", action="store_true", help="write results/benchmarks/bif_record_dtype.md and its block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = board_records()
    seeds = tuple(r.seed for r in records)
    spec = spec_for(records[0], RESULTS, Path(tempfile.mkdtemp()), seeds, "serial")
    spec = dataclasses.replace(spec, overrides={**spec.overrides, "bif": {**spec.overrides["bif"], "record_dtype": "bfloat16"}})
    summaries, failures = pipeline.evaluate(spec)
    if failures:
        raise SystemExit("\n".join(failures))
    half = next(s for s in summaries if s["metric"] == "lds")
    full = mean_se([r.metrics["lds"]["value"] for r in records])
    se = (full[1] ** 2 + half["se"] ** 2) ** 0.5
    lines = [f"tinylm `bif` at its defaults ({records[0].ground_truth.get('label')}, seeds {','.join(map(str, seeds))}; "
             f"`benchmarks/bif_record_dtype.py`, {args.threads} thread(s)): LDS of the board's float32 records against "
             f"the same runs recording in bfloat16, and speed at {args.chains} × {args.draws} draws, both alternating in "
             f"one process ({args.rounds} rounds, medians)", "",
             "| recording | LDS | draws/s | recording share of sampling |", "|---|---|---|---|"]
    plan = pipeline.prepare(dataclasses.replace(spec, seeds=(0,)))
    ctx = pipeline.make_context(spec, plan.task, plan.methods[0], 0)
    speed: dict[str, list[tuple[float, float]]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        for dtype in speed:
            bif = make_method("bif", plan.task, {**spec.overrides["bif"], "record_dtype": dtype,
                                                 "chains": str(args.chains), "draws": str(args.draws)})
            bif.score(ctx)
            x = bif.extras()
            speed[dtype].append((x["draws_per_second"], x["recording_fraction"]))
    for dtype, lds in (("float32", f"{full[0]:.3f} ± {full[1]:.3f}"), ("bfloat16", f"{half['mean']:.3f} ± {half['se']:.3f}")):
        rate = statistics.median(s[0] for s in speed[dtype])
        share = statistics.median(s[1] for s in speed[dtype])
        lines.append(f"| {dtype} | {lds} | {rate:.2f} | {100 * share:.0f} % |")
    gap = half["mean"] - full[0]
    lines += ["", f"bfloat16 − float32: LDS {gap:+.3f} ({gap / se:+.1f} combined SEs); "
              f"draws/s ×{statistics.median(s[0] for s in speed['bfloat16']) / statistics.median(s[0] for s in speed['float32']):.2f}"]
    print("\n".join(lines))
    if args.readme:
        from _readme import publish

        publish("bif_record_dtype", "\n".join(lines), "")


if __name__ == "__main__":
    main()
