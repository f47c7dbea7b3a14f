"""Ground truth: regimes (α-subsets, leave-one-out), their cache, and the build that resumes.

A ground truth is named by its kind and settings (``GroundTruthConfig.label``) and keyed by those
settings plus the task's description and the numerics it was computed with (device type; on CUDA the
determinism and TF32 settings), so CPU-fp32 and GPU-TF32 retrains never mix; its directory also records the code fingerprint of the task's
recipe and of ``retrain.py``.  A cache built by other code is moved aside (never deleted) and rebuilt,
with the reason in the log.  One file per finished retrain, so a killed build resumes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from tdabench.toolkit import brittleness, labelnoise, removal, retrain, trajectory
from tdabench.api.config import ConfigError, config_dict, content_hash
from tdabench.toolkit.files import save_tensor, write_json
from tdabench.engine.fingerprint import changes, fingerprint, same_code
from tdabench.toolkit.locks import exclusive
from tdabench.toolkit.numerics import current_numerics
from tdabench.toolkit.progress import Progress
from tdabench.engine.quarantine import quarantine
from tdabench.toolkit.retrain import train_and_measure  # noqa: F401  (re-exported: the unit of work)
from tdabench.api.task import Task
from tdabench.api.truth import GroundTruth, GroundTruthConfig, config_of  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from tdabench.engine.distributed import Executor


log = logging.getLogger("tdabench")


def check_config(gt: GroundTruthConfig, task: Task) -> None:
    """The ground-truth settings' checks that need the task (run at validation, before any training)."""
    if gt.order == "reference" and not task.unrolls:
        raise ConfigError(f"gt.order=reference needs the task to expose its training as pure steps (the "
                          f"Task.unroll hook); task {task.name} cannot: {task.unroll_unavailable()}")
    if gt.checkpoints and gt.checkpoints > task.total_steps(task.n_train):
        raise ConfigError(f"gt.checkpoints={gt.checkpoints}: the task's run has only "
                          f"{task.total_steps(task.n_train)} steps; use at most that many")
    if gt.kind == "mislabel":
        labelnoise.check(task, gt.mislabel_fraction)
    if gt.kind == "brittleness":
        brittleness.check(task)
    if gt.after_scoring and max(removal.removal_sizes(task.n_train, gt.removal_fractions)) >= task.n_train:
        raise ConfigError(f"gt.removal_fractions={','.join(map(str, gt.removal_fractions))}: removes every one of "
                          f"task {task.name}'s {task.n_train} attribution examples; use fractions below 1")
    if gt.kind == "loo" and gt.loo_examples > task.n_train:
        raise ConfigError(f"gt.loo_examples={gt.loo_examples}: the task has only {task.n_train} attribution "
                          f"examples; use at most that many, or 0 for all")


def make_masks(n_train: int, cfg: GroundTruthConfig, seed: int, scores: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    """The retrained masks ``[K, n_train]`` of ``cfg`` and, for leave-one-out, the removed examples ``[m]``
    (for top-k removal, the followed queries ``[Q]``; its masks come from the method's ``scores``)."""
    if cfg.after_scoring:
        if scores is None:
            raise ConfigError(f"gt.kind={cfg.kind} removes what a method's scores name: it is built by `tdabench run` "
                              "with --method, after scoring (not on its own)")
        queries = removal.removal_queries(scores.shape[1], cfg.removal_queries, seed)
        return removal.removal_masks(scores, queries, cfg.removal_fractions), queries
    if cfg.kind == "mislabel":
        return labelnoise.flipped_mask(n_train, cfg.mislabel_fraction, seed)[None], None    # shape: [1, n_train]
    if cfg.kind == "loo":
        removed = retrain.loo_removed(n_train, cfg.loo_examples, seed)
        return retrain.loo_masks(n_train, removed), removed
    return retrain.subset_masks(n_train, cfg.alpha, cfg.num_subsets, seed), None


def truth_sources(task: "Task | type[Task]", cfg: Optional[GroundTruthConfig] = None) -> list:
    """What a ground truth's numbers depend on: the task's recipe (and what it imports), ``retrain.py``,
    ``trajectory.py`` for one measured along training and ``brittleness.py`` for one measured by margins.
    ``task``: an instance or its class.  The one list behind every ground-truth fingerprint."""
    cls = task if isinstance(task, type) else type(task)
    along = [trajectory] if cfg is not None and cfg.checkpoints else []
    return [cls, retrain, *along, *([brittleness] if cfg is not None and cfg.kind == "brittleness" else [])]


def code_fingerprint(task: "Task | type[Task]", cfg: Optional[GroundTruthConfig] = None) -> dict[str, str]:
    """The fingerprint of what a ground truth depends on (``truth_sources``)."""
    return fingerprint(*truth_sources(task, cfg))


class GroundTruthStore:
    """One cache directory per settings key; one file per finished retrain, written atomically."""

    def __init__(self, task: Task, cfg: GroundTruthConfig, seed: int, results_dir: Path,
                 scores: Optional[Tensor] = None) -> None:
        self.task, self.cfg, self.seed, self.scores = task, cfg, seed, scores
        self.meta = {"task": task.name, "task_version": task.version, "task_config": config_dict(task.config),
                     **cfg.settings(), "seed": seed, "numerics": current_numerics(task).key()}
        if cfg.after_scoring:           # its retrains are what these scores name
            self.meta["scores"] = removal.scores_digest(scores) if scores is not None else "?"
        self.key = content_hash(self.meta)
        self.code = code_fingerprint(task, cfg)
        self.dir = Path(results_dir) / "ground_truth" / task.name / self.key
        self._pieces: dict[tuple[int, int], Tensor] = {}      # pieces read or written by this process

    def stale_reason(self) -> Optional[str]:
        """Why the cache on disk may not be reused (None: it may, or there is none)."""
        meta_file = self.dir / "meta.json"
        if not meta_file.exists():
            return None
        try:
            found = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return f"its meta.json is unreadable ({err})"
        if not same_code(found.get("code"), self.code):
            return changes(found.get("code"), self.code)
        return None

    def set_aside(self, reason: str) -> None:
        """Move a cache made by other code out of the way (kept, never deleted) and say why."""
        n = 0
        while (target := self.dir.with_name(f"{self.dir.name}.stale{n}")).exists():
            n += 1
        self.dir.rename(target)
        log.warning("ground truth %s seed %d was built by other code (%s): kept at %s, rebuilding",
                    self.task.name, self.seed, reason, target)

    @property
    def piece_shape(self) -> tuple[int, ...]:
        """One retrain's measurements: ``(n_query,)``, or ``(checkpoints, n_query)`` along its run."""
        return (self.cfg.checkpoints, self.task.n_query) if self.cfg.checkpoints else (self.task.n_query,)

    def piece(self, k: int, r: int) -> Path:
        return self.dir / "pieces" / f"k{k:05d}_r{r:03d}.pt"

    @property
    def rows(self) -> int:
        return self.masks.shape[0]

    def missing(self) -> list[tuple[int, int]]:
        """The (row, retrain seed) pairs not yet on disk (an unreadable piece is quarantined and counts as missing)."""
        return [(k, r) for k in range(self.rows) for r in range(self.cfg.retrain_seeds) if self._read(k, r) is None]

    def _read(self, k: int, r: int) -> Optional[Tensor]:
        """Piece (k, r) ``[n_query]``, or None when absent; a piece that does not load or has the wrong
        shape (a write cut short by a crash) is moved aside as ``*.corrupt`` — named, never deleted."""
        path = self.piece(k, r)
        if (k, r) in self._pieces:
            return self._pieces[(k, r)]
        if not path.exists():
            return None
        try:
            value = torch.load(path)
            if not isinstance(value, Tensor) or tuple(value.shape) != self.piece_shape:
                raise ValueError(f"shape {getattr(value, 'shape', type(value).__name__)}, expected {self.piece_shape}")
        except Exception as err:  # any unreadable file: torch's zip errors, pickle errors, a wrong shape
            target = quarantine(path)
            log.warning("ground-truth piece %s is unreadable (%s): moved to %s, retraining it", path,
                        str(err).splitlines()[0][:200], target.name)
            return None
        self._pieces[(k, r)] = value
        return value

    def save(self, k: int, r: int, targets: Tensor) -> None:
        """Write one retrain's measurements the moment it is known."""
        save_tensor(self.piece(k, r), targets.clone())
        self._pieces[(k, r)] = targets.clone()

    def prepare(self) -> None:
        """Set a stale cache aside; create the directory, write meta and masks."""
        reason = self.stale_reason()
        if reason:
            self.set_aside(reason)
        self.masks, self.removed = make_masks(self.task.n_train, self.cfg, self.seed, self.scores)
        (self.dir / "pieces").mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "meta.json", {**self.meta, "code": self.code})
        save_tensor(self.dir / "masks.pt", self.masks)

    def load(self) -> GroundTruth:
        rows = [torch.stack([self._read(k, r) for k in range(self.rows)]) for r in range(self.cfg.retrain_seeds)]
        stacked = torch.stack(rows)                                   # shape: [R, K, Q] or [R, K, C, Q]
        along = stacked if self.cfg.checkpoints else None
        if self.cfg.after_scoring:
            return GroundTruth(masks=self.masks, replicas=stacked, key=self.key, kind=self.cfg.kind, label=self.cfg.label,
                               queries=self.removed, fractions=self.cfg.removal_fractions)
        return GroundTruth(masks=self.masks, replicas=stacked[:, :, -1] if along is not None else stacked, key=self.key,
                           kind=self.cfg.kind, label=self.cfg.label, removed=self.removed, trajectory=along)


def flipped_truth(task: Task, cfg: GroundTruthConfig, seed: int) -> GroundTruth:
    """Mislabel detection's ground truth: which examples seed ``seed`` flips, as ``masks`` ``[1, n_train]``."""
    masks, _ = make_masks(task.n_train, cfg, seed)
    key = content_hash({"task": task.name, "task_config": config_dict(task.config), **cfg.settings(), "seed": seed})
    return GroundTruth(masks=masks, replicas=torch.zeros(1, 1, 0), key=key, kind=cfg.kind, label=cfg.label)


def build_ground_truth(task: Task, cfg: GroundTruthConfig, seed: int, results_dir: Path,
                       executor: "Executor", scores: Optional[Tensor] = None) -> GroundTruth:
    """Load the cached ground truth of (task, cfg, seed), training only the missing retrains."""
    if cfg.kind == "mislabel":         # this seed's labels flipped in the task; nothing is retrained
        labelnoise.corrupt(task, cfg.mislabel_fraction, seed)
        return flipped_truth(task, cfg, seed)
    store = GroundTruthStore(task, cfg, seed, results_dir, scores)
    lock = store.dir.with_name(f"{store.dir.name}.lock")
    with exclusive(lock, f"ground truth {task.name} [{cfg.label}] seed {seed}"):
        return _build(store, task, cfg, seed, executor)


def _build(store: GroundTruthStore, task: Task, cfg: GroundTruthConfig, seed: int, executor: "Executor") -> GroundTruth:
    store.prepare()
    todo = store.missing()
    if todo:
        log.info("ground truth %s [%s] seed %d: %d of %d retrains to do (%s)", task.name, cfg.label, seed,
                 len(todo), store.rows * cfg.retrain_seeds, store.dir)
        common = cfg.kind == "loo" or cfg.after_scoring   # common random numbers: the removal's effect, not a seed's
        seeds = {(k, r): retrain.reference_seed(seed) if cfg.order == "reference" else
                 retrain.retrain_seed(seed, k, r, common) for k, r in todo}
        jobs = [(k, r, store.masks[k], seeds[(k, r)]) for k, r in todo]
        with Progress(len(jobs), f"retrain {task.name} seed {seed}") as bar:
            margins = {"measure": "margin"} if cfg.kind == "brittleness" else {}    # the queries' margins, not losses
            for k, r, targets in executor.run(task, jobs, cfg.chunk_size, cfg.order, cfg.checkpoints, **margins):
                store.save(k, r, targets)
                bar.update()
    return store.load()


def load_ground_truth(task: Task, cfg: GroundTruthConfig, seed: int, results_dir: Path,
                      scores: Optional[Tensor] = None) -> GroundTruth:
    """The complete, current cached ground truth, or an error saying what is missing (no training)."""
    if cfg.kind == "mislabel":
        return flipped_truth(task, cfg, seed)
    store = GroundTruthStore(task, cfg, seed, results_dir, scores)
    reason = store.stale_reason()
    if not (store.dir / "meta.json").exists() or reason:
        raise FileNotFoundError(f"no current ground truth for {task.name} [{cfg.label}] seed {seed} under "
                                f"{store.dir}" + (f" (built by other code: {reason})" if reason else "")
                                + "; build it with `tdabench ground-truth` or `tdabench run`")
    store.masks, store.removed = make_masks(task.n_train, cfg, seed, scores)
    if store.missing():
        raise FileNotFoundError(f"ground truth {store.dir} is incomplete ({len(store.missing())} retrains "
                                f"missing); complete it with `tdabench ground-truth`")
    return store.load()
