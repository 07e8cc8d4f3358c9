"""Foreign ViT weights as rsmae backbones: official MAE ``.pth``, timm and torchgeo state dicts.

Each loader describes the file's bands and statistics (ImageNet RGB, SSL4EO-S12 Sentinel-2...) as a
:class:`~rsmae.models.weights.BackboneMeta` and loads it like a backbone file, mapping the patch
kernels by band name to the bands of the data when they differ
(:func:`~rsmae.models.adapt.adapt_patch_embed`). Files are read with ``weights_only=True``; nothing
is downloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from rsmae.bands import get_sensor
from rsmae.errors import BandError, WeightsError
from rsmae.models.keys import infer_preset, strip_prefixes
from rsmae.models.weights import BackboneMeta, build_and_load, read_weights, retarget

__all__ = [
    "ForeignTarget",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHGEO_S2_BANDS",
    "load_official_mae",
    "load_timm_weights",
    "load_torchgeo_vit",
]

# ImageNet statistics in uint8 pixel units (timm's IMAGENET_DEFAULT_MEAN/STD times 255).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Channel order of torchgeo's SSL4EO-S12 Sentinel-2 ViT weights (``_sentinel2_toa_bands`` in
# torchgeo/models/resnet.py: B1..B8, B8a, B9, B10, B11, B12): the registry's L1C order.
TORCHGEO_S2_BANDS = get_sensor("s2-l1c").names


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForeignTarget:
    """What a foreign weights file is loaded as: the keyword options every foreign loader takes.

    Attributes:
        bands: Bands of the data (e.g. the 13 Sentinel-2 L1C bands); ``None`` keeps the file's own.
        sensor: Sensor of ``bands`` (inferred when ``None``).
        preset: Encoder preset; inferred from embed_dim and depth when ``None``.
        img_size: Input size (the position table is fitted to it).
        patch_size: Patch size (kernels are resampled); default the checkpoint's.
        encoder_kwargs: Further :func:`~rsmae.models.vit.create_encoder` arguments.
        strict: Require every encoder tensor.
    """

    bands: Sequence[str] | None = None
    sensor: str | None = None
    preset: str | None = None
    img_size: int = 224
    patch_size: int | None = None
    encoder_kwargs: Mapping[str, Any] | None = None
    strict: bool = True


def _load_foreign(path: str | Path, src_info: dict[str, Any], target: ForeignTarget, *,
                  optional: frozenset[str] = frozenset()) -> VisionTransformer:
    """Load a timm-named ViT state dict whose bands and statistics ``src_info`` gives."""
    path = Path(path)
    state, _ = read_weights(path)
    try:
        stripped = strip_prefixes(state)
        preset = target.preset or infer_preset(stripped)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    kernel = stripped["patch_embed.proj.weight"] if "patch_embed.proj.weight" in stripped else None
    src = BackboneMeta(
        preset=preset,
        img_size=target.img_size,
        patch_size=target.patch_size or (int(kernel.shape[-1]) if kernel is not None else 16),
        in_chans=len(src_info["bands"]),
        encoder_kwargs=dict(target.encoder_kwargs or {}),
        **src_info,
    )
    dst = retarget(src, target.bands, target.sensor)
    return build_and_load(state, path, src, dst, strict=target.strict, optional=optional)


def load_official_mae(path: str | Path, *, in_chans: int = 3, **target: Any) -> VisionTransformer:
    """Load an official facebookresearch/mae checkpoint (``{"model": state_dict}``, R, G, B).

    The decoder, mask token and head are dropped. With ``bands``, the R, G, B kernels go to the
    red, green and blue bands and the others start from their mean
    (:func:`~rsmae.models.adapt.adapt_patch_embed`).

    Args:
        path: The ``.pth`` file.
        in_chans: 3 (RGB) unless ``bands`` is given; then it must be 3 or ``len(bands)``.
        **target: :class:`ForeignTarget` options (``bands``, ``sensor``, ``preset``, ``img_size``,
            ``patch_size``, ``encoder_kwargs``, ``strict``).

    Returns:
        The encoder; its ``rsmae_meta`` has ImageNet statistics in uint8 units for R, G, B and
        none once other bands are involved.
    """
    into = ForeignTarget(**target)
    if into.bands is None and in_chans != 3:
        raise BandError(f"in_chans={in_chans} needs bands= naming them to map the RGB kernels")
    if into.bands is not None and in_chans not in (3, len(into.bands)):
        raise BandError(f"in_chans={in_chans} but {len(into.bands)} bands given: {list(into.bands)}")
    info = {"bands": ["R", "G", "B"], "sensor": "rgb", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "gsd": None, "source": f"official MAE {Path(path).name}"}
    return _load_foreign(path, info, into)


def load_timm_weights(path: str | Path, *, src_bands: Sequence[str] = ("R", "G", "B"),
                      src_sensor: str | None = None, **target: Any) -> VisionTransformer:
    """Load a timm ViT state dict file (``.pth``, ``.bin`` or ``.safetensors``).

    Args:
        path: The weights file.
        src_bands: Bands of the file's input channels (timm's ImageNet weights: R, G, B).
        src_sensor: Sensor of ``src_bands``.
        **target: :class:`ForeignTarget` options (``bands``: ``None`` keeps ``src_bands``; ``sensor``,
            ``preset``, ``img_size``, ``patch_size``, ``encoder_kwargs``, ``strict``).

    Returns:
        The encoder; no statistics in its metadata (timm weights use several conventions).
    """
    info = {"bands": list(src_bands), "sensor": src_sensor, "mean": None, "std": None, "gsd": None,
            "source": f"timm weights {Path(path).name}"}
    return _load_foreign(path, info, ForeignTarget(**target))


def load_torchgeo_vit(path: str | Path, *, src_bands: Sequence[str] = TORCHGEO_S2_BANDS,
                      src_sensor: str = "s2-l1c", **target: Any) -> VisionTransformer:
    """Load torchgeo ViT weights from a local file (never downloads).

    The defaults describe ``ViTSmall16_Weights.SENTINEL2_ALL_MAE`` (SSL4EO-S12: 13 Sentinel-2 L1C
    bands in :data:`TORCHGEO_S2_BANDS` order, inputs divided by 10000, 10 m pixels). A missing
    final ``norm`` is tolerated, as torchgeo does (it stays an identity LayerNorm; logged).

    Args:
        path: The ``.pth`` file (a timm ``vit_small_patch16_224`` state dict).
        src_bands: Bands of the weights (torchgeo's ``weights.meta["bands"]``).
        src_sensor: Sensor of ``src_bands``.
        **target: :class:`ForeignTarget` options (``bands``: ``None`` keeps ``src_bands``; ``sensor``,
            ``preset``, ``img_size``, ``patch_size``, ``encoder_kwargs``, ``strict``: every encoder
            tensor but ``norm``).

    Returns:
        The encoder with ``rsmae_meta``.
    """
    s2 = tuple(src_bands) == TORCHGEO_S2_BANDS and src_sensor == "s2-l1c"
    n = len(src_bands)
    info = {"bands": list(src_bands), "sensor": src_sensor, "mean": [0.0] * n if s2 else None,
            "std": [10000.0] * n if s2 else None, "gsd": 10.0 if s2 else None,
            "source": f"torchgeo ViT {Path(path).name}"}
    return _load_foreign(path, info, ForeignTarget(**target),
                         optional=frozenset({"norm.weight", "norm.bias"}))
