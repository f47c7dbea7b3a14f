"""Self-describing run records (one JSON document per task × method × config × seed)."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tdabench.toolkit.files import write_json
from tdabench.toolkit.lds import mean_se

_PACKAGES = ("tdabench", "torch", "numpy", "scipy", "ray", "scikit-learn", "transformers", "kronfluence", "traker")


def environment(device: str) -> dict[str, Any]:
    """Package versions, git commit, Python, host, device and torch's CPU thread count (CPU training
    sums in a thread-dependent order): what produced a number."""
    import torch

    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"versions": versions, "git_commit": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "device": device_name(device), "torch_threads": torch.get_num_threads(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _git(*args: str, cwd: Path) -> Optional[str]:
    """git's standard output, or None where git is missing, fails or ``cwd`` is not in a checkout."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit() -> Optional[str]:
    """The commit of the tdabench checkout (with ``+dirty`` for local changes), if it is one."""
    here = Path(__file__).resolve().parent
    sha = _git("rev-parse", "HEAD", cwd=here)
    if sha is None:
        return None
    dirty = (_git("status", "--porcelain", "--untracked-files=no", cwd=here) or "").strip()
    return sha.strip() + ("+dirty" if dirty else "")


def committed(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` that exist and that git tracks in the checkout holding them (none outside one)."""
    existing = [p.resolve() for p in paths if p.exists()]
    top = _git("rev-parse", "--show-toplevel", cwd=existing[0].parent) if existing else None
    if top is None:
        return []
    root = Path(top.strip()).resolve()
    inside = [p for p in existing if p.is_relative_to(root)]
    listed = _git("ls-files", "-z", "--", *(str(p.relative_to(root)) for p in inside), cwd=root) or ""
    tracked = {root / name for name in listed.split("\0") if name}
    return [p for p in inside if p in tracked]


def device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


class CorruptRecord(ValueError):
    """A record file that does not parse (a write cut short, an edit gone wrong)."""


@dataclass
class RunResult:
    """One (task, ground truth, method, config, seed) run: its metrics, cost, and what produced it.

    ``metrics`` maps a metric's name to its entry: ``version``, ``code`` (the metric's fingerprint
    digest), ``value``, ``per_query``, ``ceiling`` and ``details``.  ``code`` is the per-module
    fingerprint of the code that produced the scores (method, task, reference model); ``ground_truth``
    holds the regime's settings, label, cache key and code digest.  ``method_recommended`` are the
    settings the task recommended, ``method_overrides`` the user's ``--set``.
    """

    task: str
    task_version: str
    task_config: dict[str, Any]
    method: str
    method_config: dict[str, Any]
    seed: int
    ground_truth: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    fit_seconds: float
    score_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: Optional[float] = None
    method_recommended: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, Any] = field(default_factory=dict)
    code: dict[str, str] = field(default_factory=dict)
    scores_file: Optional[str] = None       # the stored score matrix, relative to the record
    environment: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)   # the method's own diagnostics (Method.extras)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "RunResult":
        """The record at ``path``; an unreadable record or one of another format fails naming the file."""
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptRecord(f"{path} is unreadable ({err}); it is recomputed by `tdabench run`") from None
        try:
            return cls(**data)
        except TypeError:
            raise ValueError(f"{path} is a run record of an older tdabench (no metrics section); "
                             f"rerun it with `tdabench run` or delete it") from None

    def metric(self, name: str) -> Optional[dict[str, Any]]:
        return self.metrics.get(name)


def ceiling_note(ground_truth: dict[str, Any]) -> str:
    """Why a regime (a record's ``ground_truth`` settings) has no noise ceiling."""
    if ground_truth.get("order") == "reference":
        return "none: every retrain is the reference run reweighted, so there is no retraining noise"
    if ground_truth.get("kind") == "removal":
        return "none: each rise is against the same seeds' model on every example (the curve is in the details)"
    if ground_truth.get("kind") == "brittleness":
        return "none: each flip is against the same seeds' model on every example (the curve is in the details)"
    if ground_truth.get("kind") == "mislabel":
        return "none: mislabel detection retrains nothing (its truth is which labels were flipped)"
    return "needs gt.retrain_seeds ≥ 2"


def combined_se(a: dict[str, Any], b: dict[str, Any]) -> float:
    """√(SE_a² + SE_b²) of two summaries (``summarize``'s); a missing or NaN SE counts as 0."""
    def se(row: dict[str, Any]) -> float:
        x = row.get("se")
        return 0.0 if x is None or math.isnan(x) else float(x)
    return math.sqrt(se(a) ** 2 + se(b) ** 2)


def summarize(results: list[RunResult], metric: str) -> dict[str, Any]:
    """The per-(task, ground truth, method, config) summary over seeds of ``metric``: mean ± SE,
    the noise ceiling and the mean as a fraction of it, and mean costs."""
    first = results[0]
    values = [r.metrics[metric]["value"] for r in results if metric in r.metrics]
    mean, se = mean_se([math.nan if v is None else v for v in values])
    ceilings = [r.metrics[metric].get("ceiling") for r in results if metric in r.metrics]
    ceilings = [c for c in ceilings if c is not None]
    ceiling = float(np.mean(ceilings)) if ceilings else None
    cuda = [r.peak_cuda_mb for r in results if r.peak_cuda_mb is not None]
    return {"task": first.task, "ground_truth": first.ground_truth.get("label", ""), "method": first.method,
            "config": first.method_config, "seeds": [r.seed for r in results], "metric": metric,
            "mean": mean, "se": se, "per_seed": values, "ceiling": ceiling,
            "ceiling_note": "" if ceiling is not None else ceiling_note(first.ground_truth),
            "fraction_of_ceiling": mean / ceiling if ceiling else None,
            "fit_seconds": float(np.mean([r.fit_seconds for r in results])),
            "score_seconds": float(np.mean([r.score_seconds for r in results])),
            "peak_rss_mb": float(max(r.peak_rss_mb for r in results)),
            **({"peak_cuda_mb": float(max(cuda))} if cuda else {})}
