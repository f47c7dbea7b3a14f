"""The reference model (trained on the full attribution set) and its trajectory checkpoints,
cached per (task, config, seed).  Endpoint methods never pay for checkpoints."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn

from tdabench.api.config import content_hash
from tdabench.toolkit.files import save_tensor
from tdabench.toolkit.numerics import current_numerics
from tdabench.engine.fingerprint import digest, fingerprint
from tdabench.toolkit.checkpoints import checkpoint_steps
from tdabench.api.seeds import reference_seed
from tdabench.api.task import Checkpoint, Task

log = logging.getLogger("tdabench")


def _train_reference(task: Task, seed: int, n_checkpoints: int, spacing: str) -> tuple[nn.Module, list[Checkpoint]]:
    model = task.make_model(reference_seed(seed))
    steps = checkpoint_steps(task.total_steps(task.n_train), n_checkpoints, spacing) if n_checkpoints else ()
    checkpoints: list[Checkpoint] = []

    def hook(step: int, m: nn.Module, lr: float) -> None:
        previous = checkpoints[-1].step if checkpoints else 0
        state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        checkpoints.append(Checkpoint(step=step, state=state, lr=float(lr), steps_since_previous=step - previous))

    everything = torch.arange(task.n_train, device=task.device)
    task.train(model, everything, reference_seed(seed), on_checkpoint=hook if steps else None,
               checkpoint_steps=steps)
    if len(checkpoints) != len(steps):
        raise RuntimeError(f"{task.name}.train reported {len(checkpoints)} checkpoints, {len(steps)} were asked for")
    return model.eval(), checkpoints


def reference_key(task: Task, seed: int) -> str:
    """What the reference model of ``seed`` depends on: the task's settings, the seed, the numerics (the
    device type; on CUDA the kernel settings too, as a ground truth's key holds them) and the code of the
    task's recipe and of this file."""
    numerics = current_numerics(task)
    where = numerics.key() if numerics.device == "cuda" else numerics.device   # CPU keys as they always were
    return content_hash([task.describe(), seed, where, digest(fingerprint(type(task), sys.modules[__name__]))])


def reference_model(task: Task, seed: int, results_dir: Path, n_checkpoints: int = 0,
                    spacing: str = "even") -> tuple[nn.Module, list[Checkpoint], str]:
    """The reference model of ``seed`` (eval mode), ``n_checkpoints`` checkpoints, and its key.

    Loaded from ``results_dir/models`` when cached; trained (and cached) otherwise.  The key covers the
    task's settings, the seed, the device type and the code of the task's recipe and of this file.  A
    cached model is never overwritten: when checkpoints are first asked for, the run is repeated to
    record them and its end compared with the cached model (caches keyed on it stay true); a repeat that
    lands elsewhere (non-deterministic kernels) is reported.
    """
    key = reference_key(task, seed)
    folder = Path(results_dir) / "models" / task.name / key
    model_file, ckpt_file = folder / "model.pt", folder / f"checkpoints_{n_checkpoints}_{spacing}.pt"
    if model_file.exists() and (n_checkpoints == 0 or ckpt_file.exists()):
        model = task.make_model(reference_seed(seed))
        model.load_state_dict(torch.load(model_file, map_location=task.device))
        checkpoints = torch.load(ckpt_file, map_location=task.device, weights_only=False) if n_checkpoints else []
        return model.eval(), checkpoints, key
    log.info("training the reference model of %s seed %d%s", task.name, seed,
             f" with {n_checkpoints} checkpoints" if n_checkpoints else "")
    model, checkpoints = _train_reference(task, seed, n_checkpoints, spacing)
    if model_file.exists():
        cached = torch.load(model_file, map_location=task.device)
        _compare_repeat(task.name, seed, cached, model.state_dict())
        model.load_state_dict(cached)
    else:
        save_tensor(model_file, model.state_dict())
    if n_checkpoints:
        save_tensor(ckpt_file, checkpoints)
    return model, checkpoints, key


def _compare_repeat(name: str, seed: int, cached: dict, repeat: dict) -> None:
    """Warn when a repeated reference run (to record checkpoints) ends away from the cached model."""
    worst = max(((repeat[k].double() - v.double()).abs().max().item() for k, v in cached.items()
                 if v.is_floating_point()), default=0.0)
    if worst > 0:
        log.warning("the reference model of %s seed %d, retrained to record checkpoints, differs from the cached one "
                    "by up to %.3g (non-deterministic kernels?); the cached model is kept, its checkpoints come "
                    "from the repeat", name, seed, worst)
