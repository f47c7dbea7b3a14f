"""``tdabench verify``: check every record, stored score matrix and ground-truth cache under a results
directory — loadable, consistent shapes, made by the current code — and say what a run would
recompute.  Read-only: nothing is moved or rewritten."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterator

import torch

from tdabench.engine.fingerprint import changes, digest, fingerprint, same_code
from tdabench.engine.groundtruth import GroundTruthConfig, code_fingerprint, config_of
from tdabench.engine.pipeline import scores_code
from tdabench.engine.records import RunResult
from tdabench.engine.reproduce import carries, legacy_codes
from tdabench.api.registry import METHODS, METRICS, TASKS, UnknownNameError
from tdabench.engine.store import load_scores


def is_stale(record: RunResult, metric: str) -> bool:
    """True when the code behind ``record``'s scores, its ground truth or its ``metric`` entry has changed since."""
    try:
        method, task, metric_cls = METHODS.get(record.method), TASKS.get(record.task), METRICS.get(metric)
    except UnknownNameError:
        return True
    now = scores_code(task, method)
    entry = record.metrics.get(metric, {})
    truth_code = digest(code_fingerprint(task, config_of(record.ground_truth)))
    return (not same_code(record.code, now) or record.ground_truth.get("code") != truth_code or entry.get("version") != metric_cls.version
            or entry.get("code") != digest(fingerprint(metric_cls)))


def _record_problems(path: Path, record: RunResult) -> Iterator[str]:
    for metric in record.metrics:
        if is_stale(record, metric):
            if carries(record, legacy_codes(record)):
                yield (f"{path}: fingerprinted by file bytes, before fingerprints followed meaning, and those bytes "
                       f"are unchanged; `tdabench verify --reproduce` upgrades it without a rerun")
            else:
                yield (f"{path}: made by code that has changed since (metric {metric}); `tdabench verify --reproduce` "
                       f"checks whether its numbers changed, `run` recomputes it")
            break
    scores = path.parent / (record.scores_file or "")
    if not record.scores_file or not scores.exists():
        return   # reusable as it is; counted by ``verify`` (a fresh clone has records without their scores)
    try:
        matrix, _ = load_scores(scores)
    except Exception as err:  # any unreadable file
        yield f"{scores}: unreadable ({str(err).splitlines()[0][:120]}); `run` recomputes the method"
        return
    n_query = len(next(iter(record.metrics.values()), {}).get("per_query", [])) or matrix.shape[1]
    if matrix.dim() != 2 or matrix.shape[1] != n_query:
        yield f"{scores}: shape {tuple(matrix.shape)} does not match the record's {n_query} queries"


def _truth_problems(folder: Path) -> Iterator[str]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        yield f"{folder}: meta.json unreadable ({err}); `run` rebuilds this ground truth"
        return
    try:
        now = code_fingerprint(TASKS.get(meta["task"]), GroundTruthConfig(checkpoints=int(meta.get("checkpoints") or 0)))
    except UnknownNameError:
        yield f"{folder}: task {meta.get('task')!r} is not installed here; cannot check its code"
        return
    if not same_code(meta.get("code"), now):
        yield f"{folder}: built by other code ({changes(meta.get('code'), now)}); `run` sets it aside and rebuilds"
    shapes = set()
    for piece in sorted((folder / "pieces").glob("*.pt")):
        try:
            shapes.add(tuple(torch.load(piece).shape))
        except Exception as err:  # any unreadable file
            yield f"{piece}: unreadable ({str(err).splitlines()[0][:120]}); `run` retrains it"
    if len(shapes) > 1:
        yield f"{folder}: pieces of different shapes {sorted(shapes)}"


def verify(results_dir: Path) -> tuple[list[str], int, int]:
    """(problems found, records and caches checked, records without stored scores)."""
    root = Path(results_dir)
    paths = sorted((root / "runs").rglob("seed*.json"))
    truths = sorted(p.parent for p in (root / "ground_truth").glob("*/*/meta.json") if ".stale" not in p.parent.name)
    problems, without_scores = [], 0
    for path in paths:
        try:
            record = RunResult.load(path)
        except ValueError as err:
            problems.append(str(err))
            continue
        problems += _record_problems(path, record)
        without_scores += not (record.scores_file and (path.parent / record.scores_file).exists())
    problems += [p for folder in truths for p in _truth_problems(folder)]
    return problems, len(paths) + len(truths), without_scores


SET_ASIDE = re.compile(r"\.(stale|corrupt)\d+$")


def set_aside(results_dir: Path) -> list[Path]:
    """What the harness moved aside instead of deleting: ground-truth caches built by other code
    (``KEY.staleN``) and unreadable files (``NAME.corruptN``), anywhere under ``results_dir``."""
    found = [p for p in Path(results_dir).rglob("*") if SET_ASIDE.search(p.name)]
    return sorted(p for p in found if not any(SET_ASIDE.search(parent.name) for parent in p.parents))


def outdated_caches(results_dir: Path, cache_root: Path | None = None) -> list[Path]:
    """Methods' private caches (``cache/METHOD/TASK/CODE``, factors and features) made by other code: the
    folder is named by the method's code fingerprint, so no run of the current code can read it again.  A
    method that is not installed here is left alone (its code cannot be checked)."""
    root = Path(cache_root) if cache_root else Path(results_dir) / "cache"
    found: list[Path] = []
    for method_dir in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else ():
        try:
            code = digest(fingerprint(METHODS.get(method_dir.name)))
        except UnknownNameError:
            continue
        for folder in sorted(p for p in method_dir.glob("*/*") if p.is_dir() and not SET_ASIDE.search(p.name)):
            if folder.name != code:
                found.append(folder)
                lock = folder.with_name(folder.name + ".lock")
                found += [lock] if lock.exists() else []
    return found


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prune(results_dir: Path) -> tuple[list[Path], int]:
    """Delete what was set aside (``set_aside``) and the method caches made by other code (``outdated_caches``);
    the paths removed and the bytes freed.  Nothing current is touched: a cache in use, a record or a score
    matrix never carries a ``.staleN``/``.corruptN`` suffix, and a current method cache is named by its code."""
    gone = set_aside(results_dir) + outdated_caches(results_dir)
    freed = sum(size_of(p) for p in gone)
    for path in gone:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return gone, freed
