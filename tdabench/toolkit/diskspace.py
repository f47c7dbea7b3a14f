"""A full disk, recognised and reported: torch's zip writer reports a failed write as a bare
``RuntimeError`` (``[enforce fail at inline_container.cc:…] . unexpected pos 704 vs 598``) and leaves
the partial temporary file behind, filling what little space is left.  The command line turns that
(and an ``OSError`` with ``ENOSPC``) into one message naming the directory, and removes the partial
temporary files of this process; everything written completely stays."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: torch's serialization errors when a write comes up short.
WRITER_FAILURES = ("inline_container.cc", "PytorchStreamWriter failed", "file write failed", "iostream error")
NEARLY_FULL = 1 << 20        # bytes free below which a writer failure is taken for a full disk


def free_bytes(root: Path) -> int:
    """Free bytes on the device holding ``root`` (or its nearest existing parent)."""
    root = Path(root).resolve()
    while not root.exists() and root != root.parent:
        root = root.parent
    return shutil.disk_usage(root).free


def out_of_space(err: BaseException, root: Path) -> bool:
    """Whether ``err`` is a write that failed because the device holding ``root`` is full."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return (isinstance(err, RuntimeError) and any(s in str(err) for s in WRITER_FAILURES)
            and free_bytes(root) < NEARLY_FULL)


def remove_partial_files(root: Path, pid: int | None = None) -> list[Path]:
    """Delete the temporary files (``.NAME.tmpPID``, see ``files.py``) this process left under ``root``."""
    suffix = f".tmp{pid or os.getpid()}"
    partial = [p for p in Path(root).rglob(f".*{suffix}") if p.is_file()] if Path(root).is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def message(root: Path, removed: list[Path]) -> str:
    """The one line a full disk gets."""
    cleaned = f"; removed {len(removed)} partial temporary file(s)" if removed else ""
    return (f"no space left on the device holding {root}{cleaned}. Everything "
            "written completely is kept: free some space, or give --results-dir on another disk, and run the same "
            "command again to resume")
