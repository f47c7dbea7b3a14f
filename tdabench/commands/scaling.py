"""``tdabench scaling``: fit/score seconds and peak memory as a setting grows."""
from __future__ import annotations

import argparse

from ..cli import _common, _spec
from .base import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--method", required=True, help="method name(s), comma-separated")
    p.add_argument("--vary", required=True, metavar="[SCOPE.]FIELD=V1,V2,V3", help="the setting to grow")


def run(args: argparse.Namespace) -> int:
    from ..scaling import scaling_study

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


COMMAND = Command("scaling", "fit/score seconds and peak memory as a setting grows; exponents and plot",
                  run, add_arguments)
