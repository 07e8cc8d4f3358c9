"""Masking of an MAE: which patches the encoder sees, the loss on the hidden ones, token gathering."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mse", "random_masking", "take_tokens"]


def random_masking(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample masking by sorting noise: the ``int(N * (1 - r))`` lowest are kept.

    Args:
        noise: ``(B, N)`` values (uniform noise); lower = kept.
        mask_ratio: Fraction ``r`` of patches to hide.

    Returns:
        ``ids_keep (B, L)``, ``mask (B, N)`` (1 = masked, dtype of ``noise``) and
        ``ids_restore (B, N)`` (position of every patch in the shuffled order).
    """
    n = noise.shape[1]
    len_keep = int(n * (1 - mask_ratio))
    if not 0 < len_keep < n:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps {len_keep} of {n} patches; choose a ratio that keeps "
            "at least one patch visible and one masked (e.g. 0.75)"
        )
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    mask = (ids_restore >= len_keep).to(noise.dtype)
    return ids_shuffle[:, :len_keep], mask, ids_restore


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked patches of the per-patch mean squared error.

    Args:
        pred: ``(B, N, D)``.
        target: ``(B, N, D)``.
        mask: ``(B, N)``, 1 where the patch counts.

    Returns:
        Scalar loss.
    """
    per_patch = (pred - target).square().mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def take_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """Select tokens ``ids (B, L)`` from ``(B, N, D)`` or a shared ``(1, N, D)`` table."""
    if tokens.shape[0] == 1:
        return tokens[0][ids]
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
