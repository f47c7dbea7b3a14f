"""The reference model (trained on the full attribution set) and its trajectory checkpoints,
cached per (task, config, seed).  Endpoint methods never pay for checkpoints."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .config import content_hash
from .groundtruth import derive_seed
from .task import Checkpoint, Task

log = logging.getLogger("tdabench")


def checkpoint_steps(total_steps: int, count: int, spacing: str = "even") -> tuple[int, ...]:
    """``count`` steps ending at ``total_steps``: evenly spaced (100, 2 → (50, 100)) or, with
    ``spacing="log"``, geometrically spaced (denser early, where training moves fastest)."""
    if count < 1 or total_steps < 1:
        return ()
    if spacing == "even":
        fractions = [(i + 1) / count for i in range(count)]
    elif spacing == "log":
        fractions = [total_steps ** ((i + 1) / count - 1) for i in range(count)]
    else:
        raise ValueError(f"checkpoint spacing {spacing!r}: use 'even' or 'log'")
    steps = sorted({max(1, round(total_steps * f)) for f in fractions})
    if len(steps) < count:
        raise ValueError(f"{count} distinct checkpoints do not fit in {total_steps} training steps")
    return tuple(steps)


def _save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _train_reference(task: Task, seed: int, n_checkpoints: int, spacing: str) -> tuple[nn.Module, list[Checkpoint]]:
    model = task.make_model(derive_seed(seed, 0x4EF0))
    steps = checkpoint_steps(task.total_steps(task.n_train), n_checkpoints, spacing) if n_checkpoints else ()
    checkpoints: list[Checkpoint] = []

    def hook(step: int, m: nn.Module, lr: float) -> None:
        previous = checkpoints[-1].step if checkpoints else 0
        state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        checkpoints.append(Checkpoint(step=step, state=state, lr=float(lr), steps_since_previous=step - previous))

    everything = torch.arange(task.n_train, device=task.device)
    task.train(model, everything, derive_seed(seed, 0x4EF0), on_checkpoint=hook if steps else None,
               checkpoint_steps=steps)
    if len(checkpoints) != len(steps):
        raise RuntimeError(f"{task.name}.train reported {len(checkpoints)} checkpoints, {len(steps)} were asked for")
    return model.eval(), checkpoints


def reference_model(task: Task, seed: int, results_dir: Path, n_checkpoints: int = 0,
                    spacing: str = "even") -> tuple[nn.Module, list[Checkpoint], str]:
    """The reference model of ``seed`` (eval mode), ``n_checkpoints`` checkpoints, and its key.

    Loaded from ``results_dir/models`` when cached; trained (and cached) otherwise.  Training is
    deterministic in the seed, so retraining to record checkpoints reproduces the cached model.
    """
    key = content_hash([task.describe(), seed])
    folder = Path(results_dir) / "models" / task.name / key
    model_file, ckpt_file = folder / "model.pt", folder / f"checkpoints_{n_checkpoints}_{spacing}.pt"
    if model_file.exists() and (n_checkpoints == 0 or ckpt_file.exists()):
        model = task.make_model(derive_seed(seed, 0x4EF0))
        model.load_state_dict(torch.load(model_file, map_location=task.device))
        checkpoints = torch.load(ckpt_file, map_location=task.device, weights_only=False) if n_checkpoints else []
        return model.eval(), checkpoints, key
    log.info("training the reference model of %s seed %d%s", task.name, seed,
             f" with {n_checkpoints} checkpoints" if n_checkpoints else "")
    model, checkpoints = _train_reference(task, seed, n_checkpoints, spacing)
    _save(model.state_dict(), model_file)
    if n_checkpoints:
        _save(checkpoints, ckpt_file)
    return model, checkpoints, key
