"""Optimisation pieces of the tasks: AdamW parameter groups, warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from timm.optim import Lamb
from torch import nn

__all__ = ["NO_DECAY_NAMES", "OPTIMIZERS", "WarmupCosine", "fused_adamw_available", "make_optimizer",
           "param_groups", "scheduled"]

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
