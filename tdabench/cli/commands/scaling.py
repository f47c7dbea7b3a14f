"""``tdabench scaling``: fit/score seconds and peak memory as a setting grows."""
from __future__ import annotations

import argparse
import math

from tdabench.cli.options import add_common, spec_from_args
from tdabench.cli.commands.base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--method", required=True, help="method name(s), comma-separated")
    p.add_argument("--vary", required=True, metavar="[SCOPE.]FIELD=V1,V2,V3", help="the setting to grow")


def run(args: argparse.Namespace) -> int:
    from tdabench.studies.scaling import scaling_study

    study = scaling_study(spec_from_args(args, tuple(m for m in args.method.split(",") if m)), args.vary)
    print(f"{study['task']}: cost against {study['field']}")
    for method, points in study["points"].items():
        for p in points:
            print(f"  {method:<10} {p['setting']:>14}  fit {p['fit_seconds']:8.3f} s  score {p['score_seconds']:8.3f} s"
                  f"  peak {p['peak_rss_mb']:8.0f} MB")
        print(f"  {method:<10} growth exponents: " + format_exponents(study["exponents"][method],
                                                                      study.get("exponent_notes", {}).get(method, {})))
    print(f"wrote {study['json']}\nwrote {study['plot']}")
    return 0


def format_exponents(exponents: dict[str, float], notes: dict[str, str]) -> str:
    """``fit 1.02, score 0.98, peak memory 0.31``; a missing exponent shows ``—`` and why."""
    parts = []
    for key, label in (("fit_seconds", "fit"), ("score_seconds", "score"), ("peak_rss_mb", "peak memory")):
        value = exponents[key]
        note = notes.get(key) or "fewer than two measurable points"
        parts.append(f"{label} {value:.2f}" if not math.isnan(value) else f"{label} — ({note})")
    return ", ".join(parts)


COMMAND = Command("scaling", "fit/score seconds and peak memory as a setting grows; exponents and plot",
                  run, add_arguments)
