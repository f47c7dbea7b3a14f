"""What a run is, settled before any work: ``RunSpec`` (what the user asked for) → ``prepare`` →
``Plan`` (every configuration built and checked).  A bad setting fails here, in seconds, naming
the field and the fix — never after the first retrain."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from tdabench.toolkit import labelnoise
from tdabench.api.config import ConfigError, apply_overrides, coerce_known
from tdabench.engine.distributed import ProcessExecutor, RayExecutor, SerialExecutor, check_address
from tdabench.engine.groundtruth import GroundTruthConfig, check_config
from tdabench.api.method import Method
from tdabench.api.metric import Metric
from tdabench.toolkit.numerics import Numerics
from tdabench.api.registry import METHODS, METRICS, TASKS
from tdabench.engine.store import StoreConfig
from tdabench.api.task import Task
from tdabench.engine.tuning import AUTO, check_grids, pop_auto

#: --set scopes that are not a method's name.
CORE_SCOPES = ("task", "gt", "store")


@dataclass(frozen=True)
class RunSpec:
    """Everything one ``tdabench run`` needs, as the user gave it."""

    task: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)   # scope → key → value
    results_dir: Path = Path("results")
    device: str = "auto"
    executor: str = "ray"               # "ray": in parallel (local processes; Ray on a GPU or with ray_address), or "serial"
    ray_address: Optional[str] = None
    force: bool = False                 # recompute records that exist and are current
    update_board: bool = False          # let --force rewrite records that git tracks (the committed board)
    method_cache: Optional[Path] = None  # methods' private state (factors, features); None: results_dir/cache
    records_dir: Optional[Path] = None   # run records; None: results_dir/runs
    metrics: tuple[str, ...] = ()        # metric names; empty: every registered metric of the ground truth's kind
    deterministic: bool = True           # CUDA: deterministic kernels only (tdabench.toolkit.numerics)
    tf32: bool = False                   # CUDA: allow TF32 matmuls/convolutions (recorded; keys the ground truth)
    at_checkpoint: int = 0               # c in 1..gt.checkpoints: evaluate at that point of training (0: the end)
    check_memory: bool = True            # CUDA: trace the run's memory first and refuse what does not fit
    plan_unfinished: str = "refuse"      # refuse (or accept) a memory plan with a stage not traced to its end
    need_scores: bool = False            # a record is reused only with its score matrix (stagewise reads them)

    def __post_init__(self) -> None:
        """Paths may be given as strings (the Python API); everything else must have its declared type."""
        for name in ("results_dir", "method_cache", "records_dir"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise ConfigError(f"RunSpec.{name}={value!r}: must be a path (str or pathlib.Path)")
        if isinstance(self.methods, str) or not all(isinstance(m, str) for m in self.methods):
            raise ConfigError(f"RunSpec.methods={self.methods!r}: must be a tuple of method names, e.g. ('gradsim', 'if')")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError(f"RunSpec.seeds={self.seeds!r}: must be a non-empty tuple of integers, e.g. (0, 1, 2)")
        if not isinstance(self.at_checkpoint, int) or self.at_checkpoint < 0:
            raise ConfigError(f"RunSpec.at_checkpoint={self.at_checkpoint!r}: must be 0 (the end) or a checkpoint 1..C")

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)


@dataclass
class Plan:
    """A validated run: the task, each method with its final config, the ground truth, the store and
    the metrics; ``recommended[m]`` / ``overrides[m]``: which settings came from the task, which from the user."""

    task: Task
    methods: list[Method]
    gt: GroundTruthConfig
    store: StoreConfig
    metrics: list[Metric]
    recommended: dict[str, dict[str, Any]]
    overrides: dict[str, dict[str, Any]]


def pick_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: use auto, cpu or cuda[:N]") from None


def make_task(name: str, overrides: dict[str, str], device: torch.device) -> Task:
    cls = TASKS.get(name)
    return cls(apply_overrides(cls.Config(), overrides, "task"), device=device)


def method_config(cls: type, task: Task, overrides: dict[str, str]) -> tuple[Any, dict[str, Any], dict[str, Any], Optional[str]]:
    """(final config, the task's recommended settings, the user's parsed settings, the key set to
    ``auto`` or None) of method ``cls``: class defaults, then the task's recommendations, then ``--set``
    (each step checked by the config)."""
    recommended = task.recommendations().get(cls.name, {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(recommended) - fields)
    if unknown:
        raise ConfigError(f"task {task.name} recommends {cls.name} setting(s) {unknown} that {cls.name} does not "
                          f"have (valid: {sorted(fields)}); fix {type(task).__name__}.recommendations")
    config = dataclasses.replace(cls.Config(), **recommended)
    overrides, auto = pop_auto(cls, overrides)
    try:
        user = {k: coerce_known(config, k, v, cls.name) for k, v in overrides.items()}
    except ConfigError as err:
        autos = [k for k, v in overrides.items() if str(v).strip().lower() == AUTO]
        if not autos:
            raise
        tunable = ", ".join(cls.tunable) or "none"
        raise ConfigError(f"{err}; ({cls.name}'s settings that =auto tunes: {tunable})") from None
    if auto:
        check_grids(cls)
        user[auto] = AUTO
    return apply_overrides(config, overrides, cls.name), dict(recommended), user, auto


def make_method(name: str, task: Task, overrides: dict[str, str]) -> Method:
    """The method ``name`` with its final config (defaults, the task's recommendations, ``overrides``)."""
    return resolve_method(name, task, overrides)[0]


def resolve_method(name: str, task: Task, overrides: dict[str, str]) -> tuple[Method, dict[str, Any], dict[str, Any]]:
    """The method with its final config, the task's recommendations and the user's settings."""
    cls = METHODS.get(name)
    missing = cls.missing_requirements()
    if missing:
        raise ImportError(f"method {name!r} needs {', '.join(missing)}, which is not installed: "
                          f"{cls.install_hint} (see the README)")
    config, recommended, user, auto = method_config(cls, task, overrides)
    method = cls(config)
    method.auto = auto
    return method, recommended, user


def check_writable(results_dir: Path) -> None:
    """Fail now, not after an hour of training, if results cannot be written."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".tdabench-write-test-"):
            pass      # a probe of its own: concurrent checks (a sweep's trials) must not delete each other's
    except OSError as err:
        raise PermissionError(f"results directory {results_dir} is not writable ({err.strerror}); "
                              f"pass --results-dir DIR with a directory you can write") from None


def pick_metrics(names: tuple[str, ...], gt: GroundTruthConfig) -> list[Metric]:
    """The requested metrics (each must be defined on ``gt``'s kind), or every metric of that kind."""
    if not names:
        names = tuple(n for n in METRICS.names() if gt.kind in METRICS.get(n).kinds)
    metrics = [METRICS.get(n)() for n in names]
    for m in metrics:
        if gt.kind not in m.kinds:
            raise ConfigError(f"metric {m.name} is defined on ground truth of kind {', '.join(m.kinds)}, not "
                              f"gt.kind={gt.kind}; use --set gt.kind={m.kinds[0]} or another --metric")
    return metrics


def check_scopes(overrides: dict[str, dict[str, str]], methods: tuple[str, ...]) -> None:
    """Every ``--set`` scope names the task, the ground truth, the store or one of the run's methods."""
    scopes = {*CORE_SCOPES, *methods}
    unknown = set(overrides) - scopes
    if unknown:
        raise ConfigError(f"--set scope(s) {sorted(unknown)} match nothing; use one of {sorted(scopes)}")


def resolve(spec: RunSpec) -> Plan:
    """Resolve and check every name and setting (every --set scope must be used) and the results
    directory, without touching the task's data."""
    check_scopes(spec.overrides, spec.methods)
    task = make_task(spec.task, spec.overrides.get("task", {}), pick_device(spec.device))
    Numerics(device=task.device.type, deterministic=spec.deterministic, tf32=spec.tf32).apply()
    gt = apply_overrides(GroundTruthConfig(), spec.overrides.get("gt", {}), "gt")
    store = apply_overrides(StoreConfig(), spec.overrides.get("store", {}), "store")
    built = [resolve_method(m, task, spec.overrides.get(m, {})) for m in spec.methods]
    metrics = pick_metrics(spec.metrics, gt)
    if gt.kind == "mislabel":           # the reference model and the records are the noisy task's
        labelnoise.mark(task, gt.mislabel_fraction)
    check_writable(spec.results_dir)
    check_address(spec.ray_address or os.environ.get("RAY_ADDRESS"))
    return Plan(task=task, methods=[b[0] for b in built], gt=gt, store=store, metrics=metrics,
                recommended={b[0].name: b[1] for b in built}, overrides={b[0].name: b[2] for b in built})


def prepare(spec: RunSpec) -> Plan:
    """``resolve``, then the checks that need the task's data (sizes, the stored matrix, each
    method's ``check``).  Cheap: trains nothing; missing data fails here."""
    plan = resolve(spec)
    n_train, n_query = plan.task.n_train, plan.task.n_query
    if n_train < 2 or n_query < 1:
        raise ConfigError(f"task {plan.task.name} has {n_train} attribution and {n_query} query examples with these "
                          f"settings; attribution needs at least 2 and 1 (check the task.* sizes, `tdabench list`)")
    check_config(plan.gt, plan.task)
    if plan.gt.after_scoring and not plan.methods:
        raise ConfigError(f"gt.kind={plan.gt.kind} retrains without the top-k examples a method's scores name, so it is built "
                          f"after scoring: use `tdabench run --method NAME --set gt.kind={plan.gt.kind}`")
    plan.store.check(plan.task.n_train, plan.task.n_query)
    for method in plan.methods:
        method.check(plan.task)
        if method.auto and (plan.gt.kind != "subsets" or spec.at_checkpoint):
            raise ConfigError(f"{method.name}.{method.auto}=auto is chosen on a tuning half of α-subsets and queries; "
                              f"it needs gt.kind=subsets at the end of training (drop the auto, or gt.kind=loo / "
                              f"the checkpoint)")
    check_checkpoint(spec, plan)
    return plan


def check_checkpoint(spec: RunSpec, plan: Plan) -> None:
    """An evaluation at checkpoint c needs a ground truth measured along training and endpoint methods."""
    c, count = spec.at_checkpoint, plan.gt.checkpoints
    if not c:
        return
    if not count:
        raise ConfigError(f"evaluating at checkpoint {c} needs a ground truth measured along training; "
                          f"set gt.checkpoints={max(c, 5)}")
    if not 1 <= c <= count:
        raise ConfigError(f"checkpoint {c}: gt.checkpoints={count} gives checkpoints 1..{count}")
    for method in plan.methods:
        if method.needs_checkpoints:
            raise ConfigError(f"{method.name} follows the training trajectory itself; at a checkpoint only endpoint "
                              f"methods run (drop {method.name} from --method)")


class LazyExecutor:
    """Starts Ray (or the serial executor) only when some retrain is actually missing."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec, self._inner = spec, None

    def run(self, task: Task, jobs: list, chunk: int = 0, order: str = "independent", checkpoints: int = 0,
            measure: str = "measurement") -> Any:
        if self._inner is None:
            self._inner = self._pick(task, order)
        return self._inner.run(task, jobs, chunk, order, checkpoints, measure)

    def _pick(self, task: Task, order: str) -> Any:
        """Serial when asked; Ray when a cluster is named (``--ray-address`` or ``RAY_ADDRESS``); on this
        machine, forked worker processes for a CPU build (one per core, each retraining a chunk of
        models at once when the task trains many; no port is opened), in-process for the reference
        order's reweighted runs and for a GPU build that trains many models at once, and a local Ray
        instance for any other GPU build (it shares the GPUs out among retrains; a forked process
        cannot use CUDA)."""
        address = self.spec.ray_address or os.environ.get("RAY_ADDRESS")
        if self.spec.executor == "serial":
            return SerialExecutor()
        if address:
            return RayExecutor(address=address)
        cpu = task.device.type == "cpu"
        if order == "reference" or task.trains_many and not cpu:
            return SerialExecutor(threads=os.cpu_count())
        return ProcessExecutor() if cpu else RayExecutor()

    def close(self) -> None:
        if isinstance(self._inner, (RayExecutor, ProcessExecutor)):
            self._inner.close()
