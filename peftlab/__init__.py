"""peftlab: full fine-tuning vs parameter-efficient fine-tuning, built from scratch and measured.

The package's map, every module by job, is ``docs/package.md`` (kept once there; ``tests/test_repo.py``
checks it names every module). The top level re-exports what the lectures use most: ``load_base``,
the methods registry (``get_method``, ``apply_method``, ``remove_method``, ``trainable_count``), the
training loop (``train``, ``TrainConfig``, ``Hook``), the evaluation and the shared utilities.
"""
from .evaluate import Evaluation, evaluate_model, learning_and_forgetting, source_metrics, task_metric
from .methods import METHODS, RunContext, apply_method, get_method, register, remove_method, trainable_count
from .models import load_base
from .train import Hook, TrainConfig, TrainResult, attach_hook, train
from .utils import count_parameters, format_bytes, get_device, is_quick, print_environment, set_seed, warm_up_cpu_math

warm_up_cpu_math()

__version__ = "0.1.0"

__all__ = [
    "METHODS", "Evaluation", "Hook", "RunContext", "TrainConfig", "TrainResult", "apply_method", "attach_hook",
    "count_parameters", "evaluate_model", "format_bytes", "get_device", "get_method", "is_quick",
    "learning_and_forgetting", "load_base", "print_environment", "register", "remove_method", "set_seed", "source_metrics",
    "task_metric", "train", "trainable_count",
]
