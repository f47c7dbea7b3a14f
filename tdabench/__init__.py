"""tdabench: a benchmark for training-data attribution methods, scored by LDS against retrained models.

The package's folders are layers (``api``, ``toolkit``, ``plan``, ``engine``, ``studies``, ``report``,
``cli``; docs/architecture.md).  Each module lived flat in ``tdabench/`` before; its old name
(``tdabench.task``, ``tdabench.method``, ``tdabench.grads``, …) still imports the same module object, so a
plug-in written against it and a cache pickled with it (a reference run's checkpoints) keep working."""
import importlib
import importlib.abc
import importlib.util
import sys

#: Each layer's modules, which lived flat in tdabench/ before: the old name → where it lives now.
_FLAT = {
    "api": "checks config method metric registry seeds task unroll",
    "toolkit": "batched checkpoints dattri_bridge deeplinear diskspace files forkpool grads labelnoise lds locks metagrad "
               "meter numerics progress removal retrain sgld sparse_projection stacked_mlp training trajectory",
    "plan": "capacity costplan fakerun plansizes",
    "engine": "distributed fingerprint groundtruth pipeline quarantine records reference reproduce restore spec store tuning "
              "verify",
    "studies": "baseline_check kernel presets scaling stagewise sweep token_classes",
    "report": "anchors board board_protocols board_tables leaderboard plots site site_assets site_browser site_html site_plots",
}
MOVED = {f"tdabench.{m}": f"tdabench.{layer}.{m}" for layer, mods in _FLAT.items() for m in mods.split()}
MOVED["tdabench.commands"] = "tdabench.cli.commands"
MOVED.update({f"tdabench.commands.{c}": f"tdabench.cli.commands.{c}" for c in (
    "base", "board", "evaluate", "ground_truth", "kernel", "leaderboard", "listing", "plan", "plot", "regress", "report",
    "run", "scaling", "stagewise", "sweep", "token_classes", "verify")})


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``tdabench.<old name>`` as the module it became (no copy: the same object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())   # before the path finder: tdabench.commands.X is under a moved package

from tdabench.api.method import Context, Method, MethodConfig  # noqa: E402
from tdabench.api.metric import Metric, MetricValue  # noqa: E402
from tdabench.api.registry import METHODS, METRICS, TASKS, register_method, register_metric, register_task  # noqa: E402
from tdabench.api.task import Batch, Checkpoint, Task, TaskConfig  # noqa: E402
from tdabench.engine.groundtruth import GroundTruth, GroundTruthConfig, build_ground_truth, make_masks  # noqa: E402
from tdabench.engine.records import RunResult  # noqa: E402
from tdabench.toolkit.lds import lds, lds_per_query, mean_se, noise_ceiling  # noqa: E402
from tdabench.toolkit.retrain import train_and_measure  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Batch", "Checkpoint", "Context", "GroundTruth", "GroundTruthConfig", "METHODS", "METRICS", "Method", "Metric", "MetricValue",
           "MethodConfig", "RunResult", "TASKS", "Task", "TaskConfig", "build_ground_truth", "lds",
           "lds_per_query", "make_masks", "mean_se", "noise_ceiling", "register_method", "register_metric", "register_task",
           "train_and_measure"]
