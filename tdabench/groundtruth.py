"""Ground truth: regimes (α-subsets, leave-one-out), their cache, and the build that resumes.

A ground truth is named by its kind and settings (``GroundTruthConfig.label``) and keyed by those
settings plus the task's description and the numerics it was computed with (device type; on CUDA the
determinism and TF32 settings), so CPU-fp32 and GPU-TF32 retrains never mix; its directory also records the code fingerprint of the task's
recipe and of ``retrain.py``.  A cache built by other code is moved aside (never deleted) and rebuilt,
with the reason in the log.  One file per finished retrain, so a killed build resumes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import torch
from torch import Tensor

from . import labelnoise, removal, retrain, trajectory
from .config import ConfigError, config_dict, content_hash
from .files import save_tensor, write_json
from .fingerprint import changes, fingerprint, same_code
from .locks import exclusive
from .numerics import current_numerics
from .progress import Progress
from .quarantine import quarantine
from .retrain import train_and_measure  # noqa: F401  (re-exported: the unit of work)
from .task import Task

if TYPE_CHECKING:
    from .distributed import Executor


log = logging.getLogger("tdabench")


@dataclass(frozen=True)
class GroundTruthConfig:
    """Which ground truth: its kind and settings (``--set gt.KEY=VALUE``)."""

    kind: Literal["subsets", "loo", "mislabel", "removal"] = "subsets"   # subsets: α-subsets (LDS); loo: one retrain per removed example; mislabel: flipped labels found by self-influence (no retrains); removal: each query's top-k helpful examples (by the method's scores) removed and retrained
    alpha: float = 0.5          # subsets: each example kept with probability α (0.5 papers; 0.99 = leave 1 % out)
    num_subsets: int = 100      # subsets: K retrained subsets
    retrain_seeds: int = 1      # R retraining seeds per subset (R ≥ 2 gives the noise ceiling)
    loo_examples: int = 0       # loo: examples removed, a seeded sample (0: every example)
    order: Literal["independent", "reference"] = "independent"   # reference: every retrain is the reference run (its seed and data order) with the excluded examples weighted 0
    checkpoints: int = 0        # also measure every retrain at this many evenly spaced points of its run (0: the end only)
    removal_fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)   # removal: k as fractions of the attribution set
    removal_queries: int = 20   # removal: queries followed, a seeded sample (0: every query); each costs one retrain per fraction
    mislabel_fraction: float = 0.1   # mislabel: share of the training labels flipped (seeded by the run's seed)
    chunk_size: int = 0         # retrains trained together by tasks that train many at once (0: automatic); not in the key: it moves a measurement by float rounding only (≤ 1e-6)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"gt.alpha={self.alpha}: must lie strictly between 0 and 1 (0.5 is the papers' setting)")
        if self.num_subsets < 3:
            raise ConfigError(f"gt.num_subsets={self.num_subsets}: a rank correlation needs at least 3 subsets; "
                              f"set gt.num_subsets=100")
        if self.retrain_seeds < 1:
            raise ConfigError(f"gt.retrain_seeds={self.retrain_seeds}: must be at least 1")
        if self.chunk_size < 0:
            raise ConfigError(f"gt.chunk_size={self.chunk_size}: must be 0 (automatic) or a positive count")
        if self.order not in ("independent", "reference"):
            raise ConfigError(f"gt.order={self.order!r}: use independent (each retrain its own seed) or reference "
                              f"(the reference run reweighted, as MAGIC's own evaluation)")
        if self.order == "reference" and self.retrain_seeds != 1:
            raise ConfigError(f"gt.retrain_seeds={self.retrain_seeds} with gt.order=reference: every retrain is the "
                              f"one reference run reweighted, so replicas would be identical; set gt.retrain_seeds=1")
        if self.checkpoints < 0:
            raise ConfigError(f"gt.checkpoints={self.checkpoints}: must be 0 (measure at the end only) or a count of "
                              f"points along training; set gt.checkpoints=10")
        object.__setattr__(self, "removal_fractions", tuple(float(f) for f in self.removal_fractions))
        if not self.removal_fractions or not all(0.0 < f < 1.0 for f in self.removal_fractions):
            raise ConfigError(f"gt.removal_fractions={','.join(map(str, self.removal_fractions))}: each must lie strictly "
                              f"between 0 and 1 (shares of the attribution set removed); the protocol's are 0.01,0.02,0.05,0.1")
        if self.removal_queries < 0:
            raise ConfigError(f"gt.removal_queries={self.removal_queries}: use 0 (every query) or a count; 20 is the default")
        if self.kind == "removal" and self.order != "independent":
            raise ConfigError("gt.kind=removal retrains with common seeds of its own: drop gt.order")
        if not 0.0 < self.mislabel_fraction < 0.5:
            raise ConfigError(f"gt.mislabel_fraction={self.mislabel_fraction}: must lie strictly between 0 and 0.5 "
                              f"(the flipped labels must stay a minority); the protocol's default is 0.1")
        if self.kind == "mislabel" and (self.order != "independent" or self.checkpoints):
            raise ConfigError("gt.kind=mislabel retrains nothing: drop gt.order and gt.checkpoints")
        if self.loo_examples < 0 or self.loo_examples in (1, 2):
            raise ConfigError(f"gt.loo_examples={self.loo_examples}: use 0 (every example) or at least 3 "
                              f"(a correlation over removed examples needs 3)")

    @property
    def label(self) -> str:
        """The regime's name on every number measured against it, e.g. ``α=0.5 K=100 R=1``."""
        order = " ref-order" if self.order == "reference" else ""
        order += f" C={self.checkpoints}" if self.checkpoints else ""
        if self.kind == "loo":
            return f"LOO {self.loo_examples or 'all'} R={self.retrain_seeds}{order}"
        if self.kind == "mislabel":
            return f"mislabel {self.mislabel_fraction:.0%}"
        if self.kind == "removal":
            return (f"removal k={'/'.join(f'{f:.0%}' for f in self.removal_fractions)} Q={self.removal_queries or 'all'} "
                    f"R={self.retrain_seeds}{order}")
        return f"α={self.alpha:g} K={self.num_subsets} R={self.retrain_seeds}{order}"

    def settings(self) -> dict:
        """Only the settings this kind uses (so an unused knob does not split the cache; the order only
        when it is not the default, so the independent-order caches keep their keys)."""
        order = {"order": "reference"} if self.order == "reference" else {}
        order |= {"checkpoints": self.checkpoints} if self.checkpoints else {}
        if self.kind == "loo":
            return {"kind": "loo", "loo_examples": self.loo_examples, "retrain_seeds": self.retrain_seeds, **order}
        if self.kind == "mislabel":
            return {"kind": "mislabel", "mislabel_fraction": self.mislabel_fraction}
        if self.kind == "removal":
            return {"kind": "removal", "removal_fractions": list(self.removal_fractions),
                    "removal_queries": self.removal_queries, "retrain_seeds": self.retrain_seeds, **order}
        return {"kind": "subsets", "alpha": self.alpha, "num_subsets": self.num_subsets,
                "retrain_seeds": self.retrain_seeds, **order}

    def check(self, task: Task) -> None:
        """Checks that need the task (run at validation, before any training)."""
        if self.order == "reference" and not task.unrolls:
            raise ConfigError(f"gt.order=reference needs the task to expose its training as pure steps (the "
                              f"Task.unroll hook); task {task.name} cannot: {task.unroll_unavailable()}")
        if self.checkpoints and self.checkpoints > task.total_steps(task.n_train):
            raise ConfigError(f"gt.checkpoints={self.checkpoints}: the task's run has only "
                              f"{task.total_steps(task.n_train)} steps; use at most that many")
        if self.kind == "mislabel":
            labelnoise.check(task, self.mislabel_fraction)
        if self.kind == "removal" and max(removal.removal_sizes(task.n_train, self.removal_fractions)) >= task.n_train:
            raise ConfigError(f"gt.removal_fractions={','.join(map(str, self.removal_fractions))}: removes every one of "
                              f"task {task.name}'s {task.n_train} attribution examples; use fractions below 1")
        if self.kind == "loo" and self.loo_examples > task.n_train:
            raise ConfigError(f"gt.loo_examples={self.loo_examples}: the task has only {task.n_train} attribution "
                              f"examples; use at most that many, or 0 for all")


def config_of(entry: dict) -> GroundTruthConfig:
    """The ground-truth settings a record's ``ground_truth`` entry names (other keys ignored)."""
    names = {f.name for f in dataclasses.fields(GroundTruthConfig)}
    return GroundTruthConfig(**{k: v for k, v in entry.items() if k in names})


def make_masks(n_train: int, cfg: GroundTruthConfig, seed: int, scores: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    """The retrained masks ``[K, n_train]`` of ``cfg`` and, for leave-one-out, the removed examples ``[m]``
    (for top-k removal, the followed queries ``[Q]``; its masks come from the method's ``scores``)."""
    if cfg.kind == "removal":
        if scores is None:
            raise ConfigError("gt.kind=removal removes what a method's scores name: it is built by `tdabench run` "
                              "with --method, after scoring (not on its own)")
        queries = removal.removal_queries(scores.shape[1], cfg.removal_queries, seed)
        return removal.removal_masks(scores, queries, cfg.removal_fractions), queries
    if cfg.kind == "mislabel":
        return labelnoise.flipped_mask(n_train, cfg.mislabel_fraction, seed)[None], None    # shape: [1, n_train]
    if cfg.kind == "loo":
        removed = retrain.loo_removed(n_train, cfg.loo_examples, seed)
        return retrain.loo_masks(n_train, removed), removed
    return retrain.subset_masks(n_train, cfg.alpha, cfg.num_subsets, seed), None


@dataclass
class GroundTruth:
    """Masks ``[K, n_train]``, measurements ``[R, K, n_query]``; ``removed`` ``[K-1]`` for leave-one-out
    (row 0 is then the model trained on every example)."""

    masks: Tensor
    replicas: Tensor
    key: str
    kind: str = "subsets"
    label: str = ""
    removed: Optional[Tensor] = None
    queries: Optional[Tensor] = None      # removal: the followed queries ``[Q]`` (rows 1 + q·F + f of masks)
    fractions: tuple[float, ...] = ()     # removal: the fractions removed
    trajectory: Optional[Tensor] = None   # gt.checkpoints > 0: ``[R, K, C, Q]``, measured along each run (last: the end)
    at: int = 0                           # replicas are the trajectory's checkpoint ``at`` (1-based; 0: the end)

    @property
    def targets(self) -> Tensor:
        """The mean over retraining seeds, shape ``[K, n_query]``."""
        return self.replicas.mean(0)


def code_fingerprint(task: "Task | type[Task]", cfg: Optional[GroundTruthConfig] = None) -> dict[str, str]:
    """The code a ground truth depends on: the task's recipe (and what it imports) and ``retrain.py``
    (and ``trajectory.py`` for one measured along training).  ``task``: an instance or its class."""
    cls = task if isinstance(task, type) else type(task)
    return fingerprint(cls, retrain, *([trajectory] if cfg is not None and cfg.checkpoints else []))


class GroundTruthStore:
    """One cache directory per settings key; one file per finished retrain, written atomically."""

    def __init__(self, task: Task, cfg: GroundTruthConfig, seed: int, results_dir: Path,
                 scores: Optional[Tensor] = None) -> None:
        self.task, self.cfg, self.seed, self.scores = task, cfg, seed, scores
        self.meta = {"task": task.name, "task_version": task.version, "task_config": config_dict(task.config),
                     **cfg.settings(), "seed": seed, "numerics": current_numerics(task).key()}
        if cfg.kind == "removal":       # its retrains are what these scores name
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
        if self.cfg.kind == "removal":
            return GroundTruth(masks=self.masks, replicas=stacked, key=self.key, kind="removal", label=self.cfg.label,
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
        common = cfg.kind in ("loo", "removal")          # common random numbers: the removal's effect, not a seed's
        seeds = {(k, r): retrain.reference_seed(seed) if cfg.order == "reference" else
                 retrain.retrain_seed(seed, k, r, common) for k, r in todo}
        jobs = [(k, r, store.masks[k], seeds[(k, r)]) for k, r in todo]
        with Progress(len(jobs), f"retrain {task.name} seed {seed}") as bar:
            for k, r, targets in executor.run(task, jobs, cfg.chunk_size, cfg.order, cfg.checkpoints):
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
