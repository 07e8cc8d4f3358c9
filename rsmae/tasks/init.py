"""Start a pretraining from an existing backbone (continued pretraining): load its encoder weights.

The backbone file is read with :func:`~rsmae.models.load_backbone` for the bands, sensor and input
size of the pretraining data, so its patch kernels are mapped by band name (an RGB backbone onto
Sentinel-2: R, G, B kernels to B04, B03, B02, the other bands from their mean, all scaled by
``C_src / C_dst``; see :func:`~rsmae.models.adapt_patch_embed`) and its position table fitted to the
tile size. Only the encoder is loaded; the MAE decoder starts from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from rsmae.errors import WeightsError
from rsmae.models import load_backbone

__all__ = ["init_encoder"]

_logger = logging.getLogger(__name__)


def init_encoder(encoder: VisionTransformer, path: str | Path, data_info: dict[str, Any] | None, *,
                 preset: str, patch_size: int, img_size: int) -> None:
    """Copy the (band-adapted) encoder weights of a backbone file into ``encoder``, in place.

    Args:
        encoder: The freshly built encoder of the task.
        path: A backbone file written by :func:`~rsmae.models.save_backbone`.
        data_info: The pretraining data's ``bands`` and ``sensor`` (what the CLI links).
        preset: The task's encoder preset; the backbone must have the same.
        patch_size: The task's patch size; the backbone must have the same.
        img_size: The task's input size (the position table is fitted to it).

    Raises:
        WeightsError: naming ``path`` when the data's bands are unknown, the file is not a backbone,
            or it holds another architecture.
        BandError: when the data's bands cannot be mapped to the backbone's.
    """
    if not data_info or not data_info.get("bands"):
        raise WeightsError(f"{path}: init_backbone needs the pretraining data's bands (data_info) to "
                           "adapt the backbone; build the task with its data (the CLI links data_info)")
    source = load_backbone(path, bands=list(data_info["bands"]), sensor=data_info.get("sensor"),
                           img_size=img_size)
    meta = source.rsmae_meta
    if meta.preset != preset or meta.patch_size != patch_size:
        raise WeightsError(f"{path}: a {meta.preset} backbone with {meta.patch_size}-px patches cannot start "
                           f"a {preset} / patch {patch_size} task; use the backbone's preset and patch size")
    try:
        encoder.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: the backbone does not fit the task's encoder ({err}); build the task "
                           "with the backbone's encoder_kwargs") from err
    _logger.info("encoder initialised from %s: %s (decoder from scratch)", path, meta.source)
