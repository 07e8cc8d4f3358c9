"""Pictures of images: true-colour composites and MAE reconstructions (the one percentile stretch)."""

from __future__ import annotations

import torch
from torch import Tensor

from rsmae.bands import rgb_indices
from rsmae.models import patchify, unpatchify

__all__ = ["reconstruct", "true_colour"]


def true_colour(images: Tensor, bands: list[str], sensor: str | None, *,
                percentiles: tuple[float, float] = (2.0, 98.0), reference: Tensor | None = None) -> Tensor:
    """Percentile-stretched true-colour composites ``(B, 3, H, W)`` in [0, 1].

    Args:
        images: ``(B, C, H, W)`` in any units.
        bands: Band names of the channels.
        sensor: Their sensor; the red, green and blue bands come from :func:`~rsmae.bands.rgb_indices`,
            else the first three bands (a single band is shown grey).
        percentiles: Lower and upper percentile mapped to 0 and 1, per sample and channel.
        reference: Images whose percentiles set the stretch (default ``images``), so that inputs and
            reconstructions of one sample share a stretch.
    """
    index = rgb_indices(bands, sensor) if sensor else None
    if index is None:
        index = tuple(range(3)) if images.shape[1] >= 3 else (0, 0, 0)
    rgb = images[:, list(index)].float()
    ref = (reference if reference is not None else images)[:, list(index)].float().flatten(2)
    lo = torch.quantile(ref, percentiles[0] / 100, dim=2)[..., None, None]
    hi = torch.quantile(ref, percentiles[1] / 100, dim=2)[..., None, None]
    return ((rgb - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def reconstruct(images: Tensor, pred: Tensor, mask: Tensor, patch_size: int, *,
                norm_pix_loss: bool) -> tuple[Tensor, Tensor]:
    """Images from MAE predictions: masked patches predicted, visible patches from the input.

    Args:
        images: ``(B, C, H, W)`` model inputs.
        pred: ``(B, N, P*P*C)`` decoder output.
        mask: ``(B, N)``, 1 = masked.
        patch_size: ``P``.
        norm_pix_loss: The predictions are per-patch normalised: map them back with each input
            patch's mean and (unbiased) std, as the target was made.

    Returns:
        The reconstruction and the mask, both ``(B, C, H, W)``.
    """
    grid = (images.shape[-2] // patch_size, images.shape[-1] // patch_size)
    if norm_pix_loss:
        patches = patchify(images, patch_size)
        pred = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
    shape = (patch_size, images.shape[1], grid)
    mask = unpatchify(mask[..., None].expand(-1, -1, pred.shape[-1]).to(pred.dtype), *shape)
    return unpatchify(pred, *shape) * mask + images * (1 - mask), mask
