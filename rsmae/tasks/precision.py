"""Choose the training precision from the hardware: ``precision: auto``.

bf16 autocast pays off only where the matmuls run natively in bf16: CUDA GPUs with bf16 support,
and CPUs with AVX512-BF16 or AMX-BF16. On other CPUs (AVX2 and plain AVX512) bf16 is emulated and
slower than fp32 (METHOD.md, "Speed"), so the default there is ``"32-true"``.

Lightning's ``Trainer`` refuses ``precision="auto"`` while parsing, before any ``LightningCLI``
hook runs, so the CLI passes :class:`AutoPrecisionTrainer` as its ``trainer_class``: a ``Trainer``
that accepts ``"auto"`` and resolves it with :func:`default_precision`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

__all__ = ["AutoPrecisionTrainer", "clip_unscaled", "cpu_has_native_bf16", "cpu_flags", "default_precision"]

_logger = logging.getLogger(__name__)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """CPU feature flags from ``cpuinfo`` (empty where the file does not exist, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: Collection[str] | None = None) -> bool:
    """True when the CPU computes bf16 matmuls natively (AVX512-BF16 or AMX-BF16).

    Args:
        flags: CPU feature flags; read from ``/proc/cpuinfo`` when ``None``.
    """
    flags = cpu_flags() if flags is None else flags
    return bool(BF16_CPU_FLAGS & set(flags))


def default_precision(accelerator: str = "auto", *, flags: Collection[str] | None = None) -> str:
    """The precision to train with on this machine.

    Args:
        accelerator: The trainer's accelerator (``"cpu"`` ignores any GPU).
        flags: CPU feature flags (for tests); read from ``/proc/cpuinfo`` when ``None``.

    Returns:
        ``"bf16-mixed"`` on a CUDA GPU with bf16 support or a CPU with native bf16, else
        ``"32-true"``.
    """
    accelerator = str(accelerator).lower()
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if accelerator in ("auto", "cpu") and cpu_has_native_bf16(flags):
        return "bf16-mixed"
    return "32-true"


def clip_unscaled(plugin: Precision, optimizer: torch.optim.Optimizer, value: float | None,
                  algorithm: str | None) -> bool:
    """Clip the gradients of ``optimizer`` under bf16 autocast, where no gradient scaler exists.

    Lightning's mixed-precision plugin refuses to clip for a fused optimizer because it cannot
    unscale its gradients; with ``bf16-mixed`` there is nothing to unscale, so the gradients are
    clipped here directly and fused AdamW stays usable. Any other plugin (fp32, fp16 with a
    scaler, FSDP's sharded clipping) keeps Lightning's own clipping.

    Returns:
        Whether the gradients were clipped here (``False``: leave it to Lightning).
    """
    if not value or not isinstance(plugin, MixedPrecision) or plugin.scaler is not None:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)
    return True


class AutoPrecisionTrainer(L.Trainer):
    """A Lightning ``Trainer`` that also accepts ``precision="auto"`` (its default).

    Args:
        precision: ``"auto"`` (see :func:`default_precision`) or any Lightning precision.
        **kwargs: Every other ``Trainer`` argument.
    """

    def __init__(
        self, *, precision: Literal["auto"] | _PRECISION_INPUT | None = "auto", **kwargs: Any
    ) -> None:
        if precision == "auto":
            accelerator = kwargs.get("accelerator", "auto")
            precision = default_precision(accelerator if isinstance(accelerator, str) else "auto")
            _logger.info("precision auto -> %s", precision)
        super().__init__(precision=precision, **kwargs)
