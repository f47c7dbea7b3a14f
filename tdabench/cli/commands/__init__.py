"""The ``tdabench`` subcommands: one module each, registered in :data:`COMMANDS` (in ``--help`` order)."""
from __future__ import annotations

from tdabench.cli.commands import (
    board, evaluate, ground_truth, kernel, leaderboard, listing, plan, plot, regress, report, run, scaling,
    stagewise, sweep, token_classes, verify,
)
from tdabench.cli.commands.base import Command

COMMANDS: tuple[Command, ...] = (
    run.COMMAND,
    ground_truth.COMMAND,
    evaluate.COMMAND,
    listing.COMMAND,
    leaderboard.COMMAND,
    sweep.COMMAND,
    scaling.COMMAND,
    stagewise.COMMAND,
    kernel.COMMAND,
    token_classes.COMMAND,
    plot.COMMAND,
    report.COMMAND,
    regress.COMMAND,
    plan.COMMAND,
    verify.COMMAND,
    board.COMMAND,
)

__all__ = ["COMMANDS", "Command"]
