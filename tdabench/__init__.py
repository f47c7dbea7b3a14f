"""tdabench: a benchmark for training-data attribution methods, scored by LDS against retrained models."""
from .groundtruth import GroundTruth, GroundTruthConfig, build_ground_truth, make_masks
from .retrain import train_and_measure
from .lds import lds, lds_per_query, mean_se, noise_ceiling
from .method import Context, Method, MethodConfig
from .metric import Metric, MetricValue
from .records import RunResult
from .registry import METHODS, METRICS, TASKS, register_method, register_metric, register_task
from .task import Batch, Checkpoint, Task, TaskConfig

__version__ = "0.1.0"
__all__ = ["Batch", "Checkpoint", "Context", "GroundTruth", "GroundTruthConfig", "METHODS", "METRICS", "Method", "Metric", "MetricValue",
           "MethodConfig", "RunResult", "TASKS", "Task", "TaskConfig", "build_ground_truth", "lds",
           "lds_per_query", "make_masks", "mean_se", "noise_ceiling", "register_method", "register_metric", "register_task",
           "train_and_measure"]
