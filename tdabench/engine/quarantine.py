"""Unreadable files are moved aside, never deleted: ``NAME.corruptN`` next to where they were."""
from __future__ import annotations

from pathlib import Path


def quarantine(path: Path) -> Path:
    """Rename ``path`` to the first free ``NAME.corruptN`` and return the new path."""
    n = 0
    while (target := path.with_name(f"{path.name}.corrupt{n}")).exists():
        n += 1
    path.rename(target)
    return target
