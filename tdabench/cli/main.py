"""The ``tdabench`` command line: the parser and ``main`` (the shared options: ``options.py``).

Each subcommand lives in its own module under :mod:`tdabench.cli.commands`. To add one, write
``tdabench/commands/NAME.py`` defining ``COMMAND = Command(name, help, run, add_arguments)`` (``run(args)``
returns the exit code; keep heavy imports inside it so start-up stays fast), then add ``NAME.COMMAND``
to ``COMMANDS`` in ``tdabench/commands/__init__.py``. Raise ``ConfigError`` (or another error caught in
:func:`main`) for user mistakes: it is printed as ``tdabench: error: ...`` with exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from tdabench.toolkit import diskspace
from tdabench.api.config import ConfigError
from tdabench.api.registry import UnknownNameError

log = logging.getLogger("tdabench")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    from tdabench.cli.commands import COMMANDS  # here, not at the top: start-up imports only what a command needs

    parser = argparse.ArgumentParser(prog="tdabench", description="Training-data attribution benchmark (LDS).")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tdabench.cli.commands import COMMANDS

    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print(f"tdabench: error: --threads {args.threads}: must be at least 1 (torch CPU threads); "
              f"leave it out for torch's default", file=sys.stderr)
        return 2
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, format="[tdabench %(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    log.setLevel(level)   # our own level: kronfluence sets the root logger's level to its log_level (WARNING)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        if getattr(args, "threads", None):
            from tdabench.toolkit import threads

            with threads.pinned_to(args.threads):   # every stage on N threads: the size policy is off
                return command.run(args)
        return command.run(args)
    except (UnknownNameError, ConfigError, ImportError, ValueError, OSError, RuntimeError) as err:
        root = Path(getattr(args, "results_dir", None) or ".")
        if diskspace.out_of_space(err, root):
            print(f"tdabench: error: {diskspace.message(root, diskspace.remove_partial_files(root))}", file=sys.stderr)
            return 1
        if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, PermissionError)):
            raise                # an unexpected system error keeps its traceback
        print(f"tdabench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # executors shut their Ray instance down on the way out (their finally blocks)
        print("tdabench: interrupted; every finished retrain and record is on disk: run the same command "
              "again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
