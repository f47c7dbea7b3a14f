"""``tdabench verify --reproduce``: a stale row is settled by recomputing it, not by rereading bytes.

A record is stale when the code behind its scores, its ground truth or a metric has changed since.
Whether the *numbers* changed is a question only a rerun answers, so for each stale row (task, ground
truth, method, settings) one seed is recomputed, into a scratch directory, exactly as ``run`` would:

- its per-query metric values identical to the record's → the change did not touch the numbers: every
  seed of the row keeps its numbers and timings, and only its fingerprints are refreshed, saying so
  (``environment.refreshed``);
- any value different → the row is stale for real: the reproduced seed takes its record's place and
  ``run`` recomputes the other seeds.

Records made before fingerprints followed meaning carry hashes of file bytes; where those bytes are
still the same, the record is upgraded to the current fingerprints without any rerun.

This file is longer than 300 lines: settling a row, rerunning one seed and upgrading byte fingerprints
share one set of record bookkeeping (codes, refresh, moves to a new key).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from tdabench.toolkit import threads

from tdabench.engine import reference as reference_module
from tdabench.api.config import config_dict, content_hash, with_values
from tdabench.engine.fingerprint import digest, fingerprint, legacy_digest, legacy_fingerprint, same_code
from tdabench.engine.groundtruth import config_of, truth_sources
from tdabench.engine.records import RunResult, git_commit
from tdabench.api.registry import METHODS, METRICS, TASKS, UnknownNameError

log = logging.getLogger("tdabench")


@dataclass
class Codes:
    """The fingerprints a record carries: of its scores' code, its ground truth's, and each metric's."""

    scores: dict[str, str]
    truth: str
    metrics: dict[str, tuple[str, str]]    # name → (version, code digest)


def _sources(record: RunResult) -> tuple[Any, Any, list[Any]]:
    method, task = METHODS.get(record.method), TASKS.get(record.task)
    return method, task, truth_sources(task, config_of(record.ground_truth))


def current_codes(record: RunResult) -> Codes:
    """What ``record``'s fingerprints would be if it were made by the code installed now."""
    method, task, truth = _sources(record)
    return Codes(fingerprint(method, task, reference_module), digest(fingerprint(*truth)),
                 {m: (METRICS.get(m).version, digest(fingerprint(METRICS.get(m)))) for m in record.metrics})


def legacy_codes(record: RunResult) -> Codes:
    """The same, as fingerprints of file bytes were made before meaning hashes."""
    method, task, truth = _sources(record)
    return Codes(legacy_fingerprint(method, task, reference_module), legacy_digest(legacy_fingerprint(*truth)),
                 {m: (METRICS.get(m).version, legacy_digest(legacy_fingerprint(METRICS.get(m)))) for m in record.metrics})


def stale(record: RunResult, now: Codes) -> bool:
    """True when any fingerprint of ``record`` differs from ``now``."""
    return (not same_code(record.code, now.scores) or record.ground_truth.get("code") != now.truth
            or any((e.get("version"), e.get("code")) != now.metrics[m] for m, e in record.metrics.items()))


def carries(record: RunResult, codes: Codes) -> bool:
    """True when ``record`` carries exactly ``codes`` (module names included: the legacy scheme keyed by them)."""
    return (record.code == codes.scores and record.ground_truth.get("code") == codes.truth
            and all((e.get("version"), e.get("code")) == codes.metrics[m] for m, e in record.metrics.items()))


def refresh(record: RunResult, path: Path, now: Codes, how: str) -> None:
    """Give ``record`` the current fingerprints, keeping its numbers and timings, and say how that was
    justified in ``environment.refreshed``; save it."""
    record.code = dict(now.scores)
    record.ground_truth = {**record.ground_truth, "code": now.truth}
    for name, entry in record.metrics.items():
        entry["version"], entry["code"] = now.metrics[name]
    record.environment = {**record.environment, "refreshed": {
        "how": how, "git_commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    record.save(path)


def row_key(record: RunResult) -> str:
    """The row a record belongs to: everything but the seed (as the leaderboard groups)."""
    gt = {k: v for k, v in record.ground_truth.items() if k not in ("key", "code")}
    return content_hash([record.task, record.task_version, record.task_config, gt, record.method, record.method_config])


def _setting(value: Any) -> str:
    """A typed config value as ``--set`` writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def _differing(values: dict[str, Any], base: dict[str, Any]) -> dict[str, str]:
    return {k: _setting(v) for k, v in values.items() if json.loads(json.dumps(base.get(k), default=str)) != v}


def spec_for(record: RunResult, results_dir: Path, records_dir: Path, seeds: tuple[int, ...], executor: str) -> Any:
    """The ``RunSpec`` that makes ``record`` again (its seeds ``seeds``), its records under ``records_dir``."""
    from tdabench.engine.spec import RunSpec

    task_cls, method_cls = TASKS.get(record.task), METHODS.get(record.method)
    task_sets = _differing(record.task_config, config_dict(task_cls.Config()))
    task = task_cls(with_values(task_cls.Config, record.task_config), device="cpu")
    base = {**config_dict(method_cls.Config()), **task.recommendations().get(record.method, {})}
    gt = config_of(record.ground_truth).settings()
    gone = sorted(set(record.method_config) - set(base))   # settings the method no longer has: reproduced without
    if gone:                                               # them, and the numbers say whether they mattered
        log.info("%s on %s: the record's %s no longer exist%s; reproducing without", record.method, record.task,
                 ", ".join(f"{record.method}.{k}" for k in gone), "s" if len(gone) == 1 else "")
    kept = {k: v for k, v in record.method_config.items() if k not in gone}
    overrides = {"task": task_sets, "gt": {k: _setting(v) for k, v in gt.items()},
                 record.method: _differing(kept, base)}
    return RunSpec(task=record.task, methods=(record.method,), seeds=seeds, overrides=overrides,
                   results_dir=results_dir, records_dir=records_dir, executor=executor, device="cpu",
                   at_checkpoint=int(record.ground_truth.get("at_checkpoint") or 0))


@dataclass
class Row:
    """The records of one row, by seed."""

    records: dict[int, tuple[Path, RunResult]] = field(default_factory=dict)

    @property
    def first(self) -> tuple[Path, RunResult]:
        return self.records[min(self.records)]

    def name(self) -> str:
        _, r = self.first
        return f"{r.task}/{r.method} {r.ground_truth.get('label', '')} (seeds {','.join(map(str, sorted(self.records)))})"


def _differences(old: RunResult, new: RunResult) -> list[str]:
    """How the reproduced record's numbers differ from the stored one's (empty: identical)."""
    out = []
    for name, entry in old.metrics.items():
        fresh = new.metrics.get(name)
        if fresh is None:
            out.append(f"{name} not computed")
        elif fresh.get("per_query") != entry.get("per_query") or fresh.get("value") != entry.get("value"):
            out.append(f"{name} {entry.get('value'):.4f} → {fresh.get('value'):.4f}")
    return out


def _threads(record: RunResult) -> int:
    return int(record.environment.get("torch_threads") or torch.get_num_threads())


@dataclass(frozen=True)
class Settled:
    """What reproducing a row found: ``state`` is ``identical`` (nothing to do), ``refreshed`` (identical
    numbers, fingerprints refreshed), ``changed`` (numbers differ; not written), ``recomputed`` (numbers
    differ; the row recomputed) or ``unsettled`` (the rerun failed or cannot run here)."""

    row: str
    state: str
    detail: str

    def __str__(self) -> str:
        return f"{self.row}: {self.detail}"


def reproduce_row(row: Row, results_dir: Path, executor: str, evaluate: Callable[..., Any], write: bool = True) -> Settled:
    """Recompute the row's first seed into a scratch directory and settle the row (see the module's text).
    ``write=False`` only compares: nothing under ``results_dir/runs`` is touched."""
    path, record = row.first
    device = str(record.environment.get("device", "cpu"))
    if not device.startswith("cpu"):
        return Settled(row.name(), "unsettled", f"made on {device}; reproduce it there (this machine reproduces CPU records)")
    scratch = results_dir / "reproduce" / row_key(record)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        return _settle(row, results_dir, scratch, executor, evaluate, write)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _settle(row: Row, results_dir: Path, scratch: Path, executor: str, evaluate: Callable[..., Any], write: bool) -> Settled:
    path, record = row.first
    name = row.name()
    spec = spec_for(record, results_dir, scratch, (record.seed,), executor)
    with threads.pinned_to(_threads(record)):     # CPU sums run in a thread-dependent order: as the record was made
        _, failures = evaluate(spec)
    if failures:
        return Settled(name, "unsettled", f"the rerun failed ({failures[0]}); left as it is")
    made = sorted(scratch.rglob(f"seed{record.seed}.json"))
    if len(made) == 1 and made[0].parent.name != path.parent.name:
        return _rekeyed(row, made[0], write)
    if len(made) != 1:
        return Settled(name, "unsettled", "its rerun made no single record; left as it is")
    fresh = RunResult.load(made[0])
    differs = _differences(record, fresh)
    now = current_codes(record)
    if not differs:
        if not write or not any(stale(r, now) for _, r in row.records.values()):
            return Settled(name, "identical", f"seed {record.seed} reproduced identically")
        for seed, (p, r) in sorted(row.records.items()):
            refresh(r, p, now, f"reproduced: seed {record.seed} recomputed gave identical per-query numbers")
        if fresh.scores_file and not (path.parent / fresh.scores_file).exists():   # nothing computed is lost
            shutil.move(str(made[0].parent / fresh.scores_file), path.parent / fresh.scores_file)
        return Settled(name, "refreshed", f"seed {record.seed} reproduced identically; fingerprints refreshed, numbers "
                                          f"and timings kept")
    if not write:
        return Settled(name, "changed", f"numbers changed ({'; '.join(differs)})")
    for item in (fresh.scores_file, made[0].name):      # the reproduced seed takes its record's place
        if item:
            shutil.move(str(made[0].parent / item), path.parent / item)
    rest = tuple(s for s in sorted(row.records) if s != record.seed)
    if rest:
        evaluate(spec_for(record, results_dir, path.parents[3], rest, executor))
    return Settled(name, "recomputed", f"numbers changed ({'; '.join(differs)}): recomputed, seeds "
                                       f"{','.join(map(str, sorted(row.records)))}")


def _rekeyed(row: Row, made: Path, write: bool) -> Settled:
    """The row's settings now resolve to another record key — its method's config gained fields, which
    take their defaults.  Identical per-query numbers prove the settings mean what they meant: every seed
    moves to the new key with the config as it now reads and the current fingerprints.  Anything else is
    left as it is, said."""
    path, record = row.first
    fresh = RunResult.load(made)
    differs = _differences(record, fresh)
    target = path.parent.parent / made.parent.name
    if differs or target.exists():
        why = f"its numbers changed ({'; '.join(differs)})" if differs else f"{target} already holds records"
        return Settled(row.name(), "unsettled", f"its settings now resolve to another record key ({made.parent.name}) "
                                                f"and {why}; left as it is")
    if not write:
        return Settled(row.name(), "identical", f"seed {record.seed} reproduced identically under the key "
                                                f"{made.parent.name} its settings now resolve to")
    now = current_codes(record)
    target.mkdir(parents=True)
    for _, (p, r) in sorted(row.records.items()):
        r.method_config = fresh.method_config
        refresh(r, p, now, f"reproduced: seed {record.seed} recomputed gave identical per-query numbers under the "
                           f"key the settings now resolve to (the method's config gained fields at their defaults)")
        for item in (p.name, r.scores_file):
            if item and (p.parent / item).exists():
                shutil.move(str(p.parent / item), target / item)
    if fresh.scores_file and not (target / fresh.scores_file).exists():      # nothing computed is lost
        shutil.move(str(made.parent / fresh.scores_file), target / fresh.scores_file)
    if not any(f.suffix in (".json", ".pt") for f in path.parent.iterdir()):
        shutil.rmtree(path.parent)
    return Settled(row.name(), "refreshed", f"seed {record.seed} reproduced identically; moved to {target} (the key "
                                            f"its settings now resolve to), fingerprints refreshed, numbers kept")


def upgrade_truth_caches(results_dir: Path) -> int:
    """Ground-truth caches whose byte fingerprint still matches the files get the current fingerprint."""
    from tdabench.engine.groundtruth import GroundTruthConfig, code_fingerprint

    upgraded = 0
    for meta_file in sorted((results_dir / "ground_truth").glob("*/*/meta.json")):
        meta = json.loads(meta_file.read_text())
        try:
            task = TASKS.get(meta["task"])
        except UnknownNameError:
            continue
        cfg = GroundTruthConfig(checkpoints=int(meta.get("checkpoints") or 0))
        now = code_fingerprint(task, cfg)
        if not same_code(meta.get("code"), now) and meta.get("code") == legacy_fingerprint(*truth_sources(task, cfg)):
            meta_file.write_text(json.dumps({**meta, "code": now}))
            upgraded += 1
    return upgraded


def reproduce(results_dir: Path, task: Optional[str] = None, executor: str = "ray") -> list[str]:
    """Settle every stale record under ``results_dir`` (of ``task``): upgrade the byte-identical, reproduce
    the rest row by row.  Returns one line per row settled."""
    from tdabench.engine.pipeline import evaluate

    results_dir = Path(results_dir)
    rows: dict[str, Row] = {}
    lines: list[str] = []
    upgraded = 0
    for path in sorted((results_dir / "runs").glob(f"{task}/**/seed*.json" if task else "**/seed*.json")):
        record = RunResult.load(path)
        try:
            now = current_codes(record)
        except UnknownNameError as err:
            lines.append(f"{path}: {err}; left as it is")
            continue
        if not stale(record, now):
            continue
        if carries(record, legacy_codes(record)):
            refresh(record, path, now, "upgraded: made by byte-identical code before fingerprints followed meaning")
            upgraded += 1
            continue
        rows.setdefault(row_key(record), Row()).records[record.seed] = (path, record)
    if upgraded:
        lines.append(f"{upgraded} record(s) made by byte-identical code: fingerprints upgraded, nothing rerun")
    truths = upgrade_truth_caches(results_dir)
    if truths:
        lines.append(f"{truths} ground-truth cache(s) made by byte-identical code: fingerprints upgraded")
    for row in rows.values():
        lines.append(str(reproduce_row(row, results_dir, executor, evaluate)))
    return lines
