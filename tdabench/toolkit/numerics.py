"""How a run computes: deterministic CUDA kernels and TF32, set once per process from the run's
settings (the driver and every Ray worker alike) and recorded with every number.

On CUDA, deterministic algorithms are on by default (cuBLAS workspace pinned; cuDNN autotuning is always off)
and TF32 is off, so "float32" in a record means float32.  On the CPU nothing needs setting.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

#: torch's alert when an operation without a deterministic implementation runs under
#: ``use_deterministic_algorithms(True, warn_only=True)`` (ATen's ``alertNotDeterministic``): the
#: operation runs anyway, so a run that met one is not deterministic whatever its settings say.
_ALERT = re.compile(r"^(?P<op>\S+) does not have a deterministic implementation")


@dataclass(frozen=True)
class Numerics:
    """The numeric settings of a run: what a ground-truth key and a record must carry."""

    device: str = "cpu"          # the device type the numbers were computed on
    deterministic: bool = True   # CUDA: deterministic algorithms only
    tf32: bool = False           # CUDA: TF32 tensor-core matmuls and convolutions

    def apply(self) -> None:
        """Put these settings into effect in this process (CUDA settings only on CUDA)."""
        if self.device != "cuda":
            return
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS's requirement for determinism
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        torch.backends.cudnn.deterministic = self.deterministic
        # cuDNN autotuning stays off either way: it re-tunes for every new input shape, and every retrain's
        # subset ends in a last batch of a new size (on an H200 it made CIFAR-10 retrains 6x slower).
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32

    def key(self) -> dict:
        """What distinguishes numbers: the device type and, on CUDA, the kernel settings."""
        return asdict(self) if self.device == "cuda" else {"device": self.device}


def current_numerics(task: "object") -> Numerics:
    """The settings in effect in this process for ``task``'s device (what ``apply`` last set)."""
    device = getattr(task, "device", torch.device("cpu")).type
    if device != "cuda":
        return Numerics(device=device)
    return Numerics(device="cuda", deterministic=torch.are_deterministic_algorithms_enabled(),
                    tf32=bool(torch.backends.cuda.matmul.allow_tf32))


@contextlib.contextmanager
def watching() -> Iterator[list[str]]:
    """The operations torch ran non-deterministically in the block (``apply`` sets ``warn_only``, so
    they warn instead of failing), filled in when the block ends.  Other warnings pass through."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield found
        finally:
            found[:] = sorted({m.group("op") for w in caught if (m := _ALERT.match(str(w.message)))})
    for w in caught:
        if not _ALERT.match(str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
