"""``tdabench token-classes``: per-token influence between classes of tokens over tinylm's pretraining
(002 §4, D.2) — a study with a figure, not a benchmark number."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tdabench.cli.options import fmt
from tdabench.api.config import parse_set_args
from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="tinylm", help="a task whose base model is pretrained here (tinylm)")
    p.add_argument("--checkpoints", type=int, default=8, help="evenly spaced points of the pretraining run")
    p.add_argument("--sequences", type=int, default=12, help="probe sequences")
    p.add_argument("--half", type=int, default=12, help="tokens in a probe's first half (the second half repeats them)")
    p.add_argument("--probe", default="text", help="text: first halves open new documents of the grammar; random: "
                                                   "distinct random tokens, none shared between sequences (002 D.2)")
    p.add_argument("--seed", type=int, default=0, help="the probe's tokens and the chains' noise")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SCOPE.KEY=VALUE",
                   help="task.KEY, or bif.KEY for the sampler (nbeta, gamma, epsilon, chains, draws, burn_in, batch_size)")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="the report goes to RESULTS_DIR/stagewise")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of failures)")


def run(args: argparse.Namespace) -> int:
    from tdabench.toolkit.files import write_json
    from tdabench.engine.spec import RunSpec, prepare
    from tdabench.studies.token_classes import ProbeSettings, plot_study, token_class_study

    settings = ProbeSettings(checkpoints=args.checkpoints, sequences=args.sequences, half=args.half, probe=args.probe,
                             seed=args.seed)
    plan = prepare(RunSpec(task=args.task, methods=("bif",), overrides=parse_set_args(args.sets),
                           results_dir=args.results_dir, device="cpu", executor="serial"))
    report = token_class_study(plan.task, plan.methods[0].config, settings)
    out = args.results_dir / "stagewise" / f"{plan.task.name}-token-classes.json"
    write_json(out, json.loads(json.dumps(report)))
    keys = [k for k in report["rows"][0] if k != "step"]
    print("  ".join(f"{k:>24}" for k in ["pretraining step", *keys]))
    for row in report["rows"]:
        print("  ".join(f"{v:>24}" for v in [str(row["step"]), *(fmt(row[k]) for k in keys)]))
    print(f"written {out} and {plot_study(report, out.with_suffix('.png'))}")
    return 0


COMMAND = Command("token-classes", "per-token influence between token classes over tinylm's pretraining (002 D.2)",
                  run, add_arguments)
