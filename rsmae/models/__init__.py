"""Models: the timm ViT encoder, MAE and RC-MAE wrappers, weight loading."""

import rsmae.models.mae_zoo  # noqa: F401  (registers the rsmae_mae_* timm models)
from rsmae.models.adapt import adapt_patch_embed, checkpoint_filter_fn, match_bands
from rsmae.models.foreign import load_official_mae, load_timm_weights, load_torchgeo_vit
from rsmae.models.mae import (
    MAE_DECODER_PRESETS,
    MAEOutput,
    MaskedAutoencoder,
    mae_decoder_defaults,
    masked_mse,
    patchify,
    random_masking,
    unpatchify,
)
from rsmae.models.patch_embed import GroupedPatchEmbed, embed_patch_tokens, extract_patches
from rsmae.models.rcmae import RCMAE, teacher_momentum
from rsmae.models.registry import Weights, get_weights, list_weights, register_backbone, register_weights
from rsmae.models.spectral_embed import SpectralPatchEmbed, set_bands, use_bands
from rsmae.models.spectral_head import SpectralPatchHead
from rsmae.models.timm_cfg import timm_model_name
from rsmae.models.vit import (
    ENCODER_PRESETS,
    create_encoder,
    fused_attention_pays,
    set_fused_attention,
    sincos_pos_embed_2d,
)
from rsmae.models.weights import BackboneMeta, load_backbone, read_backbone_meta, save_backbone

__all__ = [
    "BackboneMeta",
    "Weights",
    "adapt_patch_embed",
    "checkpoint_filter_fn",
    "load_backbone",
    "load_official_mae",
    "load_timm_weights",
    "load_torchgeo_vit",
    "match_bands",
    "read_backbone_meta",
    "register_backbone",
    "register_weights",
    "save_backbone",
    "ENCODER_PRESETS",
    "MAE_DECODER_PRESETS",
    "RCMAE",
    "GroupedPatchEmbed",
    "SpectralPatchEmbed",
    "SpectralPatchHead",
    "MAEOutput",
    "MaskedAutoencoder",
    "create_encoder",
    "embed_patch_tokens",
    "extract_patches",
    "fused_attention_pays",
    "get_weights",
    "list_weights",
    "mae_decoder_defaults",
    "masked_mse",
    "patchify",
    "random_masking",
    "set_bands",
    "set_fused_attention",
    "sincos_pos_embed_2d",
    "teacher_momentum",
    "timm_model_name",
    "unpatchify",
    "use_bands",
]
