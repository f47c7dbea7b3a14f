"""Tuned rows without tuning on the test data: ``--set METHOD.KEY=auto``.

A method declares the settings worth tuning and their grids (``Method.tunable``, at most 9 values).
With ``KEY=auto`` the pipeline fits and scores the method once per grid value, ranks the values by
LDS on a *tuning half* of the run's own ground truth (a seeded half of its subsets × a seeded half
of its queries, the split ``tdabench sweep`` uses) and reports every metric of the chosen value on the
other, *held-out* half only.  The chosen value never sees a held-out subset or query: the choice reads
``tuning_view`` alone.  The record keeps the grid, the tuning curve and the choice
(``extras["auto"]``); its config shows ``KEY: "auto"``, so a tuned row never shares a key with a
default one."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Optional

import torch

from tdabench.api.config import ConfigError, config_dict
from tdabench.engine.groundtruth import GroundTruth
from tdabench.toolkit.lds import lds_per_query
from tdabench.api.seeds import derive_seed

AUTO = "auto"
#: The most values a tunable grid may hold (each costs a fit and a score per seed).
MAX_GRID = 9
SUBSET_SALT, QUERY_SALT = 0x7E5, 0x9E5


def split(n: int, seed: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded half/half split of ``range(n)``: (tuning indices, held-out indices)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, salt)))
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def _view(truth: GroundTruth, seed: int, half: int) -> tuple[GroundTruth, torch.Tensor]:
    subsets = split(truth.masks.shape[0], seed, SUBSET_SALT)[half]
    queries = split(truth.replicas.shape[-1], seed, QUERY_SALT)[half]
    name = ("tuning", "held-out")[half]
    view = dataclasses.replace(truth, masks=truth.masks[subsets], replicas=truth.replicas[:, subsets][..., queries],
                               trajectory=None, label=f"{truth.label} {name} half")
    return view, queries


def tuning_view(truth: GroundTruth, seed: int) -> tuple[GroundTruth, torch.Tensor]:
    """The tuning half of ``truth`` (its subsets and query columns) and the query indices it keeps."""
    return _view(truth, seed, 0)


def heldout_view(truth: GroundTruth, seed: int) -> tuple[GroundTruth, torch.Tensor]:
    """The held-out half of ``truth``, disjoint from ``tuning_view`` in subsets and in queries."""
    return _view(truth, seed, 1)


def half_lds(scores: torch.Tensor, view: tuple[GroundTruth, torch.Tensor]) -> float:
    """Mean per-query LDS of ``scores`` ``[n_train, n_query]`` on one half (``tuning_view``/``heldout_view``)."""
    truth, queries = view
    per_query = lds_per_query(scores[:, queries].float().cpu(), truth.masks, truth.targets)
    return float(torch.tensor(per_query).nanmean())


def split_lds(scores: torch.Tensor, truth: GroundTruth, seed: int) -> tuple[float, float]:
    """LDS on the tuning half and on the held-out half."""
    return half_lds(scores, tuning_view(truth, seed)), half_lds(scores, heldout_view(truth, seed))


def pop_auto(cls: Any, overrides: dict[str, str]) -> tuple[dict[str, str], Optional[str]]:
    """``overrides`` without the ``KEY=auto`` entry of a tunable KEY, and that KEY (None when there is
    none).  ``auto`` on any other setting stays an ordinary value (``ekfac.fisher=auto`` is one)."""
    tunable = getattr(cls, "tunable", {})
    autos = [k for k, v in overrides.items() if k in tunable and isinstance(v, str) and v.strip().lower() == AUTO]
    if not autos:
        return overrides, None
    if len(autos) > 1:
        raise ConfigError(f"{cls.name}: {', '.join(f'{k}=auto' for k in autos)}: one setting at a time can be auto")
    return {k: v for k, v in overrides.items() if k not in autos}, autos[0]


def check_grids(cls: Any) -> None:
    """A method's declared grids are small and non-empty (checked when ``auto`` is asked for)."""
    for key, grid in getattr(cls, "tunable", {}).items():
        if not 1 <= len(grid) <= MAX_GRID:
            raise ConfigError(f"{cls.name}.tunable[{key!r}] has {len(grid)} values; a grid holds 1 to {MAX_GRID}")


def settings(method: Any) -> dict[str, Any]:
    """The method's settings as records hold them: its config, with the ``auto`` key shown as ``"auto"``."""
    out = config_dict(method.config)
    if getattr(method, "auto", None):
        out[method.auto] = AUTO
    return out


def choose(key: str, grid: tuple[Any, ...], run: Callable[[Any], Any], truth: GroundTruth,
           seed: int) -> tuple[Any, dict[str, Any]]:
    """Run ``run(value)`` (→ a ``Scored``) for every grid value and keep the one with the highest LDS on
    the tuning half; returns (that Scored, the record's ``auto`` entry).  A value whose run fails is
    skipped and its error kept; all failing raises the first error."""
    view = tuning_view(truth, seed)
    curve: list[Optional[float]] = []
    errors: dict[str, str] = {}
    best, best_value, best_lds, first_error = None, None, -math.inf, None
    start = time.perf_counter()
    for value in grid:
        try:
            scored = run(value)
        except Exception as err:  # a setting the method refuses here (e.g. a damping too small): skip it, say why
            first_error = first_error or err
            errors[str(value)] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            curve.append(None)
            continue
        lds = half_lds(scored.scores, view)
        curve.append(lds)
        if not math.isnan(lds) and lds > best_lds:
            best, best_value, best_lds = scored, value, lds
    if best is None:
        raise first_error if first_error is not None else ValueError(f"{key}=auto: no grid value gave a tuning LDS")
    info = {"key": key, "grid": list(grid), "tuning_lds": curve, "chosen": best_value, "tuning_seconds":
            time.perf_counter() - start, "reported_on": "held-out half (subsets × queries disjoint from the tuning half)"}
    if errors:
        info["errors"] = errors
    return best, info
