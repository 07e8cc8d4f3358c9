"""Optimisation pieces of the tasks: AdamW parameter groups, warmup + cosine schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.optim import Lamb
from torch import nn

__all__ = ["NO_DECAY_NAMES", "OPTIMIZERS", "WarmupCosine", "effective_batch", "fused_adamw_available",
           "make_optimizer", "param_groups", "scheduled", "task_optimizer"]

_logger = logging.getLogger(__name__)

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token")


class WarmupCosine:
    """Learning-rate factor: linear warmup to 1, then cosine down to ``floor`` at ``total`` steps.

    Args:
        warmup: Warmup steps.
        total: Steps of the whole run.
        floor: Final factor (``min_lr / lr``).
    """

    def __init__(self, warmup: int, total: int, floor: float = 0.0) -> None:
        self.warmup, self.total, self.floor = int(warmup), max(int(total), 1), float(floor)

    def __call__(self, step: int) -> float:
        """Factor at optimiser step ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def fused_adamw_available(device: torch.device) -> bool:
    """Whether fused AdamW kernels exist for ``device`` (torch keeps the list private)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older or newer torch
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as in MAE: weight decay on matrices only, none on norms, biases and tokens.

    Args:
        model: The model; parameters that do not require gradients are left out.
        weight_decay: Decay of the first group.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            skip = param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scheduled(optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0) -> dict:
    """Lightning's ``configure_optimizers`` value: ``optimizer`` under :class:`WarmupCosine`, per step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, floor))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


OPTIMIZERS = ("adamw", "sgd", "lamb")


def make_optimizer(name: str, groups: list[dict], lr: float, betas: tuple[float, float], momentum: float,
                   fast: dict[str, bool]) -> torch.optim.Optimizer:
    """AdamW (MAE's), SGD with momentum (weight decay as L2) or LAMB (timm's, layer-wise trust ratio)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **fast)


def effective_batch(trainer: Any) -> int:
    """Samples per optimiser step: the datamodule's ``batch_size`` x accumulation x world size.

    Raises:
        ValueError: when neither the datamodule nor the train loader gives a batch size.
    """
    hparams = getattr(trainer.datamodule, "hparams", {}) if trainer.datamodule is not None else {}
    batch = hparams.get("batch_size") or getattr(trainer.train_dataloader, "batch_size", None)
    if not batch:
        raise ValueError("cannot find the batch size to scale the learning rate; use a datamodule "
                         "with a batch_size hyperparameter")
    return int(batch) * trainer.accumulate_grad_batches * trainer.world_size


def task_optimizer(model: nn.Module, hparams: Mapping[str, Any], trainer: Any,
                   device: torch.device) -> tuple[dict, int]:
    """A pretraining task's optimiser and per-step schedule, from its hyper-parameters.

    ``lr = base_lr * effective_batch / 256`` (:func:`effective_batch`), ``optimizer`` of
    :data:`OPTIMIZERS` over :func:`param_groups`, linear warmup (``warmup_steps``, default 5 % of the
    run) and cosine to ``min_lr``; fused where the device has it, unless an fp16 gradient scaler would
    have to unscale it before clipping.

    Returns:
        Lightning's optimiser configuration and the run's total optimiser steps.
    """
    total = int(trainer.estimated_stepping_batches)
    effective = effective_batch(trainer)
    lr = hparams["base_lr"] * effective / 256
    groups = param_groups(model, hparams["weight_decay"])
    # a gradient scaler (fp16) cannot unscale a fused optimizer's gradients before clipping
    scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
    fused = fused_adamw_available(device) and not (scaled and trainer.gradient_clip_val)
    fast = {"fused": True} if fused else {"foreach": True}
    optimizer = make_optimizer(hparams.get("optimizer", "adamw"), groups, lr, tuple(hparams["betas"]),
                               hparams.get("momentum", 0.9), fast)
    warmup = hparams["warmup_steps"] if hparams.get("warmup_steps") is not None else round(0.05 * total)
    _logger.info("%s lr %.3g (base %.3g x %d / 256), %d steps, warmup %d, %s", type(optimizer).__name__,
                 lr, hparams["base_lr"], effective, total, warmup, next(iter(fast)))
    return scheduled(optimizer, warmup, total, hparams["min_lr"] / lr if lr > 0 else 0.0), total
