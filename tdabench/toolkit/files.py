"""Atomic files: a reader never sees half a file, and an interrupted write leaves the old one intact."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def save_tensor(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
