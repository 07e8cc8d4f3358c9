"""Reconstruction-consistent MAE (Lee et al. 2022): an MAE student and its EMA teacher.

The teacher sees the same visible patches as the student (same noise, same mask; with a spectral
encoder, the student's current bands) and its reconstruction is a second target:
``loss = recon + gamma * MSE(pred, stopgrad(teacher_pred))``, both averaged over masked patches.
The teacher follows the student by an exponential moving average whose momentum rises from ``base``
to 1 on a cosine over the whole run (:func:`teacher_momentum`, counted in global steps). Call
:meth:`RCMAE.update_teacher` after every optimiser step.

Under FSDP shard the teacher exactly like the student (the same modules wrapped): the EMA then pairs
local shards, and the teacher runs through its ``forward``, so FSDP gathers its weights.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from rsmae.models.mae import MAEOutput, MaskedAutoencoder, masked_mse
from rsmae.models.spectral_embed import use_bands

__all__ = ["RCMAE", "teacher_momentum"]


def teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """EMA momentum at a global step: cosine from ``base`` (step 0) to 1 (``total_steps``).

    Args:
        step: Global optimiser step (not the step within an epoch); clamped to
            ``[0, total_steps]``.
        total_steps: Steps of the whole run.
        base: Momentum at step 0.

    Returns:
        ``1 - (1 - base) * (cos(pi * t) + 1) / 2`` with ``t = step / total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be positive (steps of the whole run)")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base momentum {base} must lie in [0, 1] (e.g. 0.996)")
    t = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


class RCMAE(nn.Module):
    """An MAE student with an EMA teacher whose reconstruction regularises the student.

    Args:
        student: The MAE being trained (attribute ``student``).
        consistency_weight: ``gamma``, weight of the teacher-consistency term.

    Attributes:
        student: The trained :class:`MaskedAutoencoder`.
        teacher: Its deep copy, updated only by :meth:`update_teacher`; parameters do not require
            gradients but are registered, so checkpoints hold both. Give optimisers
            ``student.parameters()`` (or filter on ``requires_grad``). The teacher always runs
            in eval mode (no dropout or drop-path, as in the official code), without gradients.
    """

    def __init__(self, student: MaskedAutoencoder, *, consistency_weight: float = 1.0) -> None:
        super().__init__()
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight={consistency_weight} must be >= 0 (default 1)")
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.consistency_weight = float(consistency_weight)

    def train(self, mode: bool = True) -> RCMAE:
        """Set the student's mode; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self,
        images: Tensor,
        *,
        noise: Tensor | None = None,
        mask_ratio: float | None = None,
        gsd: Tensor | None = None,
    ) -> MAEOutput:
        """Student MAE loss plus consistency with the teacher under the same mask.

        Args:
            images: ``(B, C, H, W)``.
            noise: ``(B, N)`` masking noise shared by student and teacher; fresh when ``None``.
            mask_ratio: Overrides the student's default ratio.
            gsd: Optional ``(B,)`` metres per pixel (``gsd_pos_embed`` models only).

        Returns:
            :class:`MAEOutput` with ``consistency_loss`` set and
            ``loss = recon_loss + consistency_weight * consistency_loss``.
        """
        if noise is None:
            noise = self.student.make_noise(images.shape[0], device=images.device)
        ratio = self.student.mask_ratio if mask_ratio is None else mask_ratio
        out = self.student(images, noise=noise, mask_ratio=ratio, gsd=gsd)
        bands = self.student.bands  # a spectral teacher sees the student's bands
        same_bands = (use_bands(self.teacher, bands, sensor=self.student.encoder.patch_embed.sensor)
                      if bands else nullcontext())
        with torch.no_grad(), same_bands:  # called as a module, so FSDP's hooks gather a sharded teacher
            teacher = self.teacher(images, noise=noise, mask_ratio=ratio, gsd=gsd, target=out.target)
        out.teacher_loss = teacher.recon_loss
        consistency = masked_mse(out.pred, teacher.pred.detach(), out.mask)
        out.loss = out.recon_loss + self.consistency_weight * consistency
        out.consistency_loss = consistency
        return out

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step ``T <- m * T + (1 - m) * S`` over parameters; buffers are copied.

        Args:
            momentum: ``m`` in ``[0, 1]`` (see :func:`teacher_momentum`).
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum {momentum} must lie in [0, 1]")
        for mae in (self.student, self.teacher):
            if callable(getattr(mae, "reshard", None)):  # FSDP2: a root without backward stays gathered
                mae.reshard()
        student = dict(self.student.named_parameters())
        if momentum < 1.0:
            for name, t in self.teacher.named_parameters():
                t.lerp_(student[name].detach().to(t.dtype), 1.0 - momentum)
        student_buffers = dict(self.student.named_buffers())
        for name, buf in self.teacher.named_buffers():
            buf.copy_(student_buffers[name])
