"""Advisory file locks, so that two tdabench runs on one results directory never build the same
ground truth or compute the same record at the same time (the second waits, then reuses)."""
from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path
from typing import Iterator

log = logging.getLogger("tdabench")


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block; say so when waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another tdabench run that is working on %s", what)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
