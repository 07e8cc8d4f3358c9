"""Training tasks: MAE / RC-MAE pretraining, its callbacks, frozen-feature probes."""

from rsmae.tasks.callbacks import (
    BackboneExport,
    ProbeCallback,
    ReconstructionImages,
    reconstruct,
    true_colour,
)
from rsmae.tasks.optim import WarmupCosine, param_groups
from rsmae.tasks.precision import AutoPrecisionTrainer, cpu_has_native_bf16, default_precision
from rsmae.tasks.pretrain import PretrainTask, export_backbone
from rsmae.tasks.probe import extract_features, knn_accuracy, linear_probe_accuracy

__all__ = [
    "AutoPrecisionTrainer",
    "BackboneExport",
    "PretrainTask",
    "ProbeCallback",
    "ReconstructionImages",
    "WarmupCosine",
    "cpu_has_native_bf16",
    "default_precision",
    "export_backbone",
    "extract_features",
    "knn_accuracy",
    "linear_probe_accuracy",
    "param_groups",
    "reconstruct",
    "true_colour",
]
