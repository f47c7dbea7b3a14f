"""The command line: ``tdabench`` (``main``), its shared options and one file per subcommand (``commands/``)."""
from tdabench.cli.main import main

__all__ = ["main"]
