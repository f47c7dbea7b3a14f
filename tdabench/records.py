"""Self-describing run records (one JSON document per task × method × config × seed)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .lds import mean_se

_PACKAGES = ("tdabench", "torch", "numpy", "scipy", "ray", "scikit-learn", "transformers", "kronfluence", "traker")


def environment(device: str) -> dict[str, Any]:
    """Package versions, git commit, Python, host and device: what produced a number."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"versions": versions, "git_commit": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "device": device_name(device),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def git_commit() -> Optional[str]:
    """The commit of the tdabench checkout (with ``+dirty`` for local changes), if it is one."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


@dataclass
class RunResult:
    """One (task, method, config, seed) run: LDS, per-query LDS, cost, and what produced it."""

    task: str
    task_version: str
    task_config: dict[str, Any]
    method: str
    method_config: dict[str, Any]
    seed: int
    ground_truth: dict[str, Any]
    lds: float
    lds_per_query: list[float]
    fit_seconds: float
    score_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: Optional[float] = None
    noise_ceiling: Optional[float] = None
    environment: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)   # the method's own diagnostics (Method.extras)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "RunResult":
        return cls(**json.loads(Path(path).read_text()))


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """The per-(task, method, config) summary over seeds: LDS mean ± SE and mean costs."""
    first = results[0]
    lds = [r.lds for r in results]
    mean, se = mean_se(lds)
    ceilings = [r.noise_ceiling for r in results if r.noise_ceiling is not None]
    cuda = [r.peak_cuda_mb for r in results if r.peak_cuda_mb is not None]
    return {"task": first.task, "method": first.method, "config": first.method_config,
            "seeds": [r.seed for r in results], "lds_mean": mean, "lds_se": se, "lds_per_seed": lds,
            "fit_seconds": float(np.mean([r.fit_seconds for r in results])),
            "score_seconds": float(np.mean([r.score_seconds for r in results])),
            "peak_rss_mb": float(max(r.peak_rss_mb for r in results)),
            **({"peak_cuda_mb": float(max(cuda))} if cuda else {}),
            **({"noise_ceiling": float(np.mean(ceilings))} if ceilings else {})}
