"""Code fingerprints: which source produced a cached number.

A fingerprint is the SHA-256 of the source files of a class's module and of every module it reaches
through its imports, restricted to tdabench and the plug-in's own package (third-party libraries are
identified by their versions in the record's environment instead).  Modules that never change a
number (the CLI, reports, registries, config parsing) are left out, so editing a report does not
invalidate ground truth.  Each module's own hash is kept, so a mismatch can say *what* changed.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import sys
import types
from functools import lru_cache
from typing import Any, Iterable

#: tdabench modules that shape how numbers are stored or shown, never the numbers themselves.
NEUTRAL = frozenset(f"tdabench.{m}" for m in (
    "cli", "config", "registry", "leaderboard", "plots", "progress", "records", "presets", "sweep", "scaling",
    "baseline_check", "meter", "fingerprint", "distributed", "forkpool", "pipeline", "store", "groundtruth", "quarantine", "restore", "spec", "verify", "numerics", "locks", "stagewise", "kernel", "__init__"))


def _root(name: str) -> str:
    return name.split(".", 1)[0]


def _source_hash(module: types.ModuleType) -> str | None:
    try:
        path = inspect.getsourcefile(module)
    except TypeError:
        return None
    if not path or not os.path.exists(path):
        return None
    stat = os.stat(path)
    return _file_hash(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=None)
def _file_hash(path: str, mtime_ns: int, size: int) -> str:
    """Hash of one file, cached while its modification time and size stay the same."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def _imports(module: types.ModuleType) -> Iterable[str]:
    """Names of the modules that ``module``'s globals come from (its imports, direct and by name)."""
    for value in vars(module).values():
        if isinstance(value, types.ModuleType):
            yield value.__name__
        else:
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str):
                yield owner


def module_hashes(module_name: str) -> tuple[tuple[str, str], ...]:
    """``((module, hash), ...)`` of ``module_name`` and its reachable project modules, sorted."""
    roots = {"tdabench", _root(module_name)}
    seen: dict[str, str] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        module = sys.modules.get(name)
        neutral = name in NEUTRAL or name.startswith("tdabench.commands")
        if name in seen or module is None or neutral and name != module_name:
            continue
        digest = _source_hash(module)
        seen[name] = digest or "?"
        todo += [n for n in _imports(module) if _root(n) in roots and n not in seen]
    return tuple(sorted(seen.items()))


def fingerprint(*objects: Any) -> dict[str, str]:
    """Per-module source hashes of the code behind ``objects`` (classes, functions or modules)."""
    out: dict[str, str] = {}
    for obj in objects:
        name = obj.__name__ if isinstance(obj, types.ModuleType) else obj.__module__
        out.update(module_hashes(name))
    return out


def digest(hashes: dict[str, str]) -> str:
    """One short hex digest of a fingerprint."""
    return hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:16]


def changes(old: dict[str, str] | None, new: dict[str, str]) -> str:
    """A readable account of what differs between two fingerprints (for 'recomputed because …')."""
    if not old:
        return "it carries no code fingerprint (made by an older tdabench)"
    changed = sorted(m for m in new.keys() & old.keys() if new[m] != old[m])
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    parts = ([f"changed: {', '.join(changed)}"] if changed else []) + \
            ([f"now also uses: {', '.join(added)}"] if added else []) + \
            ([f"no longer uses: {', '.join(removed)}"] if removed else [])
    return "; ".join(parts) or "no difference"
