"""The MAE of every encoder preset as a timm model (``timm.create_model("rsmae_mae_<preset>")``)."""

from __future__ import annotations

from typing import Any

import timm
from timm.models import register_model

from rsmae.models.mae import MaskedAutoencoder, mae_decoder_defaults
from rsmae.models.vit import TIMM_PREFIX

__all__: list[str] = []  # importing the module registers the models

_MAE_ARGS = ("decoder_dim", "decoder_depth", "decoder_heads", "mask_ratio", "norm_pix_loss", "gsd_pos_embed",
             "reference_gsd")


def _create_mae(preset: str, pretrained: bool, kwargs: dict[str, Any]) -> MaskedAutoencoder:
    """An MAE of a preset: MAE arguments in ``kwargs`` go to the wrapper, the rest to the encoder."""
    mae_args = {**mae_decoder_defaults(preset), **{k: kwargs.pop(k) for k in _MAE_ARGS if k in kwargs}}
    kwargs.setdefault("num_classes", 0)
    encoder = timm.create_model(f"{TIMM_PREFIX}{preset}", pretrained=pretrained, **kwargs)
    return MaskedAutoencoder(encoder, **mae_args)


@register_model
def rsmae_mae_vit_test(pretrained: bool = False, **kwargs: Any) -> MaskedAutoencoder:
    """MAE of the test ViT (decoder 1 x 32): for tests only."""
    return _create_mae("vit_test", pretrained, kwargs)


@register_model
def rsmae_mae_vit_tiny(pretrained: bool = False, **kwargs: Any) -> MaskedAutoencoder:
    """MAE of ViT-Ti (decoder 2 x 128)."""
    return _create_mae("vit_tiny", pretrained, kwargs)


@register_model
def rsmae_mae_vit_small(pretrained: bool = False, **kwargs: Any) -> MaskedAutoencoder:
    """MAE of ViT-S (decoder 4 x 256, the reference config of METHOD.md)."""
    return _create_mae("vit_small", pretrained, kwargs)


@register_model
def rsmae_mae_vit_base(pretrained: bool = False, **kwargs: Any) -> MaskedAutoencoder:
    """MAE of ViT-B (decoder 8 x 512, the MAE paper's)."""
    return _create_mae("vit_base", pretrained, kwargs)


@register_model
def rsmae_mae_vit_large(pretrained: bool = False, **kwargs: Any) -> MaskedAutoencoder:
    """MAE of ViT-L (decoder 8 x 512, the MAE paper's)."""
    return _create_mae("vit_large", pretrained, kwargs)
