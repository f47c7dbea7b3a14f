"""The command interface: what one ``tdabench`` subcommand provides."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For commands that take no options of their own."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help line, how it adds its options, and its handler (returns the exit code)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = no_arguments
