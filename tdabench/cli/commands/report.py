"""``tdabench report``: a self-contained static site (leaderboard tables, interactive plots) from the run records."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tdabench.cli.commands.base import Command

log = logging.getLogger("tdabench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="only this task")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="where the run records are")
    p.add_argument("--output", type=Path, default=None, help="folder of the site (default: RESULTS_DIR/site)")
    p.add_argument("--screenshot", type=Path, default=None, metavar="PNG",
                   help="also save a screenshot of the site (headless Chromium through selenium)")


def run(args: argparse.Namespace) -> int:
    from tdabench.report.site import build

    index = build(args.results_dir, args.output, args.task)
    print(f"wrote {index} (open it in a browser: no server needed, nothing is fetched)")
    log.info("built from the stored records under %s: nothing was run", args.results_dir / "runs")
    if args.screenshot:
        from tdabench.report.site_browser import screenshot

        errors = [e for e in screenshot(index, args.screenshot) if e.get("level") == "SEVERE"]
        for entry in errors:
            log.warning("browser console: %s", entry.get("message"))
        print(f"wrote {args.screenshot}")
    return 0


COMMAND = Command("report", "write a static site (sortable leaderboards, interactive plots) from the run records",
                  run, add_arguments)
