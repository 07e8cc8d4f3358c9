"""Band dropout: keep a random non-empty subset of a batch's bands (issue 24, any-sensor pretraining).

An encoder with a wavelength-conditioned patch embedding
(:class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`) takes any set of bands; training it on
random subsets teaches it to work from whichever bands a sensor has. The subset is drawn once per
batch (tokens of one batch share their band tuple) from the ``generator`` passed in, and the kept
bands stay in their input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rsmae.errors import BandError

__all__ = ["drop_bands"]


def drop_bands(
    images: Tensor,
    bands: Sequence[str],
    generator: torch.Generator | None = None,
    *,
    p_keep_min: float = 0.0,
    p_keep_max: float = 1.0,
) -> tuple[Tensor, tuple[str, ...]]:
    """Keep a random subset of the bands of ``images``; never none.

    The number kept is uniform over ``max(1, ceil(p_keep_min * C)) .. max(1, floor(p_keep_max * C))``,
    then that many bands are drawn uniformly without replacement.

    Args:
        images: ``(B, C, H, W)`` whose channels are ``bands``.
        bands: The ``C`` band names.
        generator: Source of randomness (torch's default generator when ``None``); draws happen on its
            device, so a seed gives the same subset on CPU and GPU.
        p_keep_min: Smallest fraction of the bands to keep.
        p_keep_max: Largest fraction of the bands to keep.

    Returns:
        The images of the kept bands and their names, in input order.

    Raises:
        BandError: when ``bands`` does not name the ``C`` channels.
        ValueError: unless ``0 <= p_keep_min <= p_keep_max <= 1``.
    """
    if images.dim() != 4 or images.shape[1] != len(bands) or not bands:
        raise BandError(f"images of shape {tuple(images.shape)} do not hold the {len(bands)} bands "
                        f"{list(bands)}; pass (B, C, H, W) and one name per channel")
    if not 0.0 <= p_keep_min <= p_keep_max <= 1.0:
        raise ValueError(f"need 0 <= p_keep_min <= p_keep_max <= 1, got {p_keep_min} and {p_keep_max}")
    count = len(bands)
    low = max(1, math.ceil(p_keep_min * count))
    high = max(low, math.floor(p_keep_max * count))
    device = generator.device if generator is not None else torch.device("cpu")
    keep = low + int(torch.randint(high - low + 1, (1,), generator=generator, device=device))
    chosen = torch.randperm(count, generator=generator, device=device)[:keep].sort().values
    return images.index_select(1, chosen.to(images.device)), tuple(bands[i] for i in chosen.tolist())
