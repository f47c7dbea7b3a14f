"""LDS ground truth: random α-subsets of the attribution set, retrained and measured, cached and
resumable.  ``train_and_measure`` is the unit of work; executors (serial or Ray) run it."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from .config import config_dict, content_hash
from .lds import noise_ceiling
from .progress import Progress
from .task import Task

if TYPE_CHECKING:
    from .distributed import Executor

log = logging.getLogger("tdabench")


@dataclass(frozen=True)
class GroundTruthConfig:
    """How the ground truth is drawn: K subsets, each example in with probability α, R seeds each."""

    alpha: float = 0.5
    num_subsets: int = 100
    retrain_seeds: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"gt.alpha={self.alpha}: must lie strictly between 0 and 1")
        if self.num_subsets < 3:
            raise ValueError(f"gt.num_subsets={self.num_subsets}: a rank correlation needs at least 3 subsets")
        if self.retrain_seeds < 1:
            raise ValueError(f"gt.retrain_seeds={self.retrain_seeds}: must be at least 1")


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by ``parts`` (stable across runs, platforms and Python versions)."""
    return int(content_hash(list(parts), 8), 16) & 0x7FFFFFFF


def make_masks(n_train: int, cfg: GroundTruthConfig, seed: int) -> Tensor:
    """Subset masks, shape ``[K, n_train]`` bool: each example included i.i.d. with probability α
    (001, Appendix C.1).  Reproducible in ``seed``; an empty subset is redrawn."""
    gen = torch.Generator().manual_seed(derive_seed(seed, 0xA1FA))
    masks = torch.rand(cfg.num_subsets, n_train, generator=gen) < cfg.alpha
    while (empty := ~masks.any(1)).any():
        masks[empty] = torch.rand(int(empty.sum()), n_train, generator=gen) < cfg.alpha
    return masks


def train_and_measure(task: Task, mask: Tensor, seed: int) -> Tensor:
    """Train a fresh model on the examples in ``mask`` (shape ``[n_train]``) and return the query
    measurements, shape ``[n_query]`` float32 on the CPU.  Plain function: no Ray, no caching."""
    indices = mask.nonzero().squeeze(1)
    model = task.make_model(seed)
    task.train(model, indices, seed)
    return task.measure(model, task.query_data()).cpu()


@dataclass
class GroundTruth:
    """Masks ``[K, n_train]`` and measurements ``[R, K, n_query]`` of one seed's retrains."""

    masks: Tensor
    replicas: Tensor
    key: str

    @property
    def targets(self) -> Tensor:
        """The mean over retraining seeds, shape ``[K, n_query]``."""
        return self.replicas.mean(0)

    @property
    def noise_ceiling(self) -> Optional[float]:
        return noise_ceiling(self.replicas) if self.replicas.shape[0] >= 2 else None


class GroundTruthStore:
    """One cache directory per content key; one file per finished retrain, written atomically."""

    def __init__(self, task: Task, cfg: GroundTruthConfig, seed: int, results_dir: Path) -> None:
        self.task, self.cfg, self.seed = task, cfg, seed
        self.meta = {"task": task.name, "task_version": task.version, "task_config": config_dict(task.config),
                     "alpha": cfg.alpha, "num_subsets": cfg.num_subsets, "retrain_seeds": cfg.retrain_seeds,
                     "seed": seed}
        self.key = content_hash(self.meta)
        self.dir = Path(results_dir) / "ground_truth" / task.name / self.key
        self._check_meta()

    def _check_meta(self) -> None:
        meta_file = self.dir / "meta.json"
        if meta_file.exists():
            found = json.loads(meta_file.read_text())
            if found != self.meta:
                raise RuntimeError(f"ground-truth cache {self.dir} was written for different settings "
                                   f"({found}); it is never reused under another key. Delete that directory.")

    def piece(self, k: int, r: int) -> Path:
        return self.dir / "pieces" / f"k{k:05d}_r{r:03d}.pt"

    def missing(self) -> list[tuple[int, int]]:
        """The (subset, retrain seed) pairs not yet on disk."""
        return [(k, r) for k in range(self.cfg.num_subsets) for r in range(self.cfg.retrain_seeds)
                if not self.piece(k, r).exists()]

    def save(self, k: int, r: int, targets: Tensor) -> None:
        """Write one retrain's measurements the moment it is known (tmp file, then rename)."""
        path = self.piece(k, r)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(targets.clone(), tmp)
        os.replace(tmp, path)

    def prepare(self) -> Tensor:
        """Create the directory, write meta and masks (or load them); return the masks."""
        (self.dir / "pieces").mkdir(parents=True, exist_ok=True)
        (self.dir / "meta.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True))
        masks = make_masks(self.task.n_train, self.cfg, self.seed)
        torch.save(masks, self.dir / "masks.pt")
        return masks

    def load(self, masks: Tensor) -> GroundTruth:
        rows = [torch.stack([torch.load(self.piece(k, r)) for k in range(self.cfg.num_subsets)])
                for r in range(self.cfg.retrain_seeds)]
        return GroundTruth(masks=masks, replicas=torch.stack(rows), key=self.key)  # shape: [R, K, Q]


def build_ground_truth(task: Task, cfg: GroundTruthConfig, seed: int, results_dir: Path,
                       executor: "Executor") -> GroundTruth:
    """Load the cached ground truth of (task, cfg, seed), training only the missing retrains."""
    store = GroundTruthStore(task, cfg, seed, results_dir)
    masks = store.prepare()
    todo = store.missing()
    if todo:
        log.info("ground truth %s seed %d: %d of %d retrains to do (%s)", task.name, seed, len(todo),
                 cfg.num_subsets * cfg.retrain_seeds, store.dir)
        jobs = [(k, r, masks[k], derive_seed(seed, k, r)) for k, r in todo]
        with Progress(len(jobs), f"retrain {task.name} seed {seed}") as bar:
            for k, r, targets in executor.run(task, jobs):
                store.save(k, r, targets)
                bar.update()
    return store.load(masks)
