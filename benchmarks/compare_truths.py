"""Two builds of the same ground truth, compared piece by piece: the Ray executor against a serial build,
or one build against a repeat (determinism).  Prints, per ground truth both results directories hold
(same task and key), how many retrain pieces both have, how many are bitwise equal and the largest
absolute difference; ``--json`` writes the same.  Exit status 0 always: the figures are the result.

    python benchmarks/compare_truths.py RESULTS_A RESULTS_B [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def compare(a: Path, b: Path) -> list[dict]:
    """One entry per ground truth (``ground_truth/TASK/KEY``) present in both ``a`` and ``b``."""
    rows = []
    for folder in sorted((a / "ground_truth").glob("*/*/pieces")):
        twin = b / folder.relative_to(a)
        if not twin.is_dir() or ".stale" in folder.parent.name:
            continue
        names = sorted(p.name for p in folder.glob("*.pt") if (twin / p.name).exists())
        equal, worst, scale = 0, 0.0, 0.0
        for name in names:
            x, y = torch.load(folder / name).double(), torch.load(twin / name).double()
            equal += bool(torch.equal(x, y))
            worst = max(worst, float((x - y).abs().max()))
            scale = max(scale, float(x.abs().max()))
        rows.append({"truth": str(folder.parent.relative_to(a / "ground_truth")), "pieces": len(names),
                     "bitwise_equal": equal, "max_abs_diff": worst, "max_abs_value": scale})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = compare(args.a, args.b)
    print(f"{'ground truth':<32} {'pieces':>6} {'bitwise equal':>13} {'max |a-b|':>10} {'max |a|':>9}")
    for r in rows:
        print(f"{r['truth']:<32} {r['pieces']:>6} {r['bitwise_equal']:>13} {r['max_abs_diff']:>10.3g} "
              f"{r['max_abs_value']:>9.3g}")
    if not rows:
        print(f"no ground truth is in both {args.a} and {args.b}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
