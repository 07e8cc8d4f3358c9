"""Any-sensor encoders as timm models: ``rsmae_<preset>_spectral``, registered by an explicit call.

After :func:`register_spectral_models` (nothing is registered when this module is imported)::

    register_spectral_models()
    encoder = timm.create_model("rsmae_vit_small_spectral")                 # the 13 Sentinel-2 L1C bands
    encoder = timm.create_model("rsmae_vit_tiny_spectral", bands=["B4", "B3", "B2"], sensor="landsat-oli")

Each is the preset's ``rsmae_<preset>`` model with ``patch_embed="spectral"``
(:class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`): kernels generated from the bands'
wavelengths, the bands set at creation (default the 13 Sentinel-2 L1C bands, ``in_chans`` follows
them) and changed per batch with :func:`~rsmae.models.spectral_embed.use_bands`. Every argument of
the preset's model works (``img_size``, ``patch_size``, ``spectral_embed={...}``, ``pretrained=True``
with a spectral backbone file).
"""

from __future__ import annotations

from typing import Any

import timm
from timm.models import is_model, register_model
from timm.models.vision_transformer import VisionTransformer

from rsmae.bands import get_sensor
from rsmae.models.timm_cfg import TIMM_PREFIX

__all__ = ["SPECTRAL_MODELS", "register_spectral_models"]

_DEFAULT_SENSOR = "s2-l1c"


def _spectral(preset: str, pretrained: bool, kwargs: dict[str, Any]) -> VisionTransformer:
    """The preset's encoder with the spectral patch embedding, on the given bands (default S2 L1C)."""
    kwargs.setdefault("patch_embed", "spectral")
    if kwargs.get("bands") is None:
        kwargs["bands"] = list(get_sensor(_DEFAULT_SENSOR).names)
        kwargs.setdefault("sensor", _DEFAULT_SENSOR)
    kwargs.setdefault("in_chans", len(kwargs["bands"]))
    kwargs.setdefault("num_classes", 0)
    return timm.create_model(f"{TIMM_PREFIX}{preset}", pretrained=pretrained, **kwargs)


def rsmae_vit_test_spectral(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Any-sensor test ViT (64 wide, 2 blocks): for tests only."""
    return _spectral("vit_test", pretrained, kwargs)


def rsmae_vit_tiny_spectral(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Any-sensor ViT-Ti (192 wide, 12 blocks, 3 heads)."""
    return _spectral("vit_tiny", pretrained, kwargs)


def rsmae_vit_small_spectral(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Any-sensor ViT-S (384 wide, 12 blocks, 6 heads)."""
    return _spectral("vit_small", pretrained, kwargs)


SPECTRAL_MODELS = (rsmae_vit_test_spectral, rsmae_vit_tiny_spectral, rsmae_vit_small_spectral)


def register_spectral_models() -> list[str]:
    """Register the any-sensor models with timm (idempotent) and return their names."""
    for factory in SPECTRAL_MODELS:
        if not is_model(factory.__name__):
            register_model(factory)
    return [factory.__name__ for factory in SPECTRAL_MODELS]
