"""Code fingerprints: which code produced a cached number — by its meaning, not its bytes.

Each module is hashed by its syntax tree: comments, docstrings, formatting and quoting leave no trace,
and the project's own imports are reduced to the names they bind (``from .batched import f`` and
``from ..toolkit.batched import f`` read the same), so reformatting a file, rewording a comment or
moving a module to another folder changes no hash.  Changing an expression, a constant or a name does.

A number's fingerprint is the set of these hashes over its module and every project module it reaches
through its imports (third-party libraries are identified by their versions in the record instead).
Two fingerprints are the same code when their hashes are the same multiset: the module names are kept
beside the hashes only to say *what* changed.  Modules that never change a number (the CLI, reports,
registries, config parsing, the engine's bookkeeping) are left out, so editing a report stales nothing.

Fingerprints made before this scheme hashed each file's bytes (``legacy_*`` below); ``tdabench verify
--reproduce`` upgrades a record carrying one when the file is byte for byte still the same.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import types
from functools import lru_cache
from typing import Any, Callable, Iterable

#: tdabench modules that shape how numbers are stored or shown, never the numbers themselves.
NEUTRAL = frozenset(f"tdabench.{m}" for m in (
    "api.config", "api.registry", "api.truth", "api.published", "api.suite",
    "toolkit.progress", "toolkit.meter", "toolkit.threads", "toolkit.chunks", "toolkit.forkpool", "toolkit.numerics", "toolkit.locks",
    "engine.records", "engine.fingerprint", "engine.distributed", "engine.pipeline", "engine.store", "engine.groundtruth",
    "engine.quarantine", "engine.restore", "engine.spec", "engine.verify", "engine.reproduce", "engine.reuse",
    "studies.presets", "studies.sweep", "studies.scaling", "studies.baseline_check", "studies.stagewise", "studies.kernel",
    "report.leaderboard", "report.plots", "__init__",
    # the layers' packages hold no code
    "api", "toolkit", "plan", "engine", "studies", "report", "cli"))

#: Fields that carry formatting only (``u''`` prefixes, ``# type:`` comments).
_FORMAT_FIELDS = frozenset({"kind", "type_comment", "type_ignores"})


def _root(name: str) -> str:
    return name.split(".", 1)[0]


def _is_noop_string(node: ast.AST) -> bool:
    """A statement that is a bare string: a docstring, or a string written as a comment."""
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


class _Normalize(ast.NodeTransformer):
    """Drop bare strings; reduce imports of the project's own modules (relative, or under ``roots``) to
    the names they bind, so the hash does not depend on where a module lives."""

    def __init__(self, roots: frozenset[str]) -> None:
        self.roots = roots

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, name, [s for s in value if not _is_noop_string(s)])
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        if node.level or _root(node.module or "") in self.roots:
            return ast.ImportFrom(module=None, names=node.names, level=0)
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        names = [ast.alias(name=a.name.rsplit(".", 1)[-1], asname=a.asname)
                 if a.asname and _root(a.name) in self.roots else a for a in node.names]
        return ast.Import(names=names)


def _serialize(node: Any) -> str:
    """A stable text of a syntax tree: node types and fields in order, without positions, formatting
    fields, or empty and missing values (so one Python's new empty fields do not change a hash)."""
    if isinstance(node, ast.AST):
        parts = [f"{k}={_serialize(v)}" for k, v in ast.iter_fields(node)
                 if k not in _FORMAT_FIELDS and v is not None and v != []]
        return f"{type(node).__name__}({','.join(parts)})"
    if isinstance(node, list):
        return "[" + ",".join(_serialize(v) for v in node) + "]"
    return f"{type(node).__name__}:{node!r}"


def meaning_hash(source: str, roots: Iterable[str] = ("tdabench",)) -> str:
    """The hash of a module's source by its meaning (see the module's docstring)."""
    tree = _Normalize(frozenset(roots)).visit(ast.parse(source))
    return hashlib.sha256(_serialize(tree).encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def _file_hash(path: str, mtime_ns: int, size: int, roots: frozenset[str]) -> str:
    """The meaning hash of one file, cached while its modification time and size stay the same."""
    with open(path, encoding="utf-8") as fh:
        return meaning_hash(fh.read(), roots)


@lru_cache(maxsize=None)
def _legacy_file_hash(path: str, mtime_ns: int, size: int, roots: frozenset[str]) -> str:
    """The hash of one file's bytes: the scheme of fingerprints made before meaning hashes."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def _source_hash(module: types.ModuleType, roots: frozenset[str], file_hash: Callable[..., str]) -> str | None:
    try:
        path = inspect.getsourcefile(module)
    except TypeError:
        return None
    if not path or not os.path.exists(path):
        return None
    stat = os.stat(path)
    return file_hash(path, stat.st_mtime_ns, stat.st_size, roots)


def _imports(module: types.ModuleType) -> Iterable[str]:
    """Names of the modules that ``module``'s globals come from (its imports, direct and by name)."""
    for value in vars(module).values():
        if isinstance(value, types.ModuleType):
            yield value.__name__
        else:
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str):
                yield owner


def module_hashes(module_name: str, file_hash: Callable[..., str] = _file_hash) -> tuple[tuple[str, str], ...]:
    """``((module, hash), ...)`` of ``module_name`` and its reachable project modules, sorted."""
    roots = frozenset({"tdabench", _root(module_name)})
    seen: dict[str, str] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        module = sys.modules.get(name)
        neutral = name in NEUTRAL or name.startswith("tdabench.cli.")
        if name in seen or module is None or neutral and name != module_name:
            continue
        digest_ = _source_hash(module, roots, file_hash)
        seen[name] = digest_ or "?"
        todo += [n for n in _imports(module) if _root(n) in roots and n not in seen]
    return tuple(sorted(seen.items()))


def _owner(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, types.ModuleType) else obj.__module__


def fingerprint(*objects: Any) -> dict[str, str]:
    """Per-module meaning hashes of the code behind ``objects`` (classes, functions or modules)."""
    out: dict[str, str] = {}
    for obj in objects:
        out.update(module_hashes(_owner(obj)))
    return out


def digest(hashes: dict[str, str]) -> str:
    """One short hex digest of a fingerprint: of its hashes as a multiset, whatever the modules are called."""
    return hashlib.sha256("\n".join(sorted(hashes.values())).encode()).hexdigest()[:16]


def same_code(old: dict[str, str] | None, new: dict[str, str]) -> bool:
    """True when two fingerprints describe the same code (module names and places aside)."""
    return bool(old) and digest(old) == digest(new)


def changes(old: dict[str, str] | None, new: dict[str, str]) -> str:
    """A readable account of what differs between two fingerprints (for 'recomputed because …')."""
    if not old:
        return "it carries no code fingerprint (made by an older tdabench)"
    if same_code(old, new):
        return "no difference"
    moved_from = {h: m for m, h in old.items() if m not in new}
    moved = {m: moved_from.pop(h) for m, h in new.items() if m not in old and h in moved_from}
    changed = sorted(m for m in new.keys() & old.keys() if new[m] != old[m])
    added = sorted(m for m in new.keys() - old.keys() if m not in moved)
    removed = sorted(set(moved_from.values()))
    parts = ([f"changed: {', '.join(changed)}"] if changed else []) + \
            ([f"now also uses: {', '.join(added)}"] if added else []) + \
            ([f"no longer uses: {', '.join(removed)}"] if removed else [])
    return "; ".join(parts) or "no difference"


def legacy_fingerprint(*objects: Any) -> dict[str, str]:
    """Per-module hashes of the files' bytes, as fingerprints were made before meaning hashes."""
    out: dict[str, str] = {}
    for obj in objects:
        out.update(module_hashes(_owner(obj), _legacy_file_hash))
    return out


def legacy_digest(hashes: dict[str, str]) -> str:
    """The digest of a byte fingerprint, as it was computed before meaning hashes."""
    return hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:16]
