"""``python -m tdabench.cli``: the ``tdabench`` command."""
import sys

from tdabench.cli.main import main

sys.exit(main())
