"""Models: the timm ViT encoder, MAE and RC-MAE wrappers, weight loading."""

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
from rsmae.models.vit import ENCODER_PRESETS, create_encoder, sincos_pos_embed_2d

__all__ = [
    "ENCODER_PRESETS",
    "MAE_DECODER_PRESETS",
    "RCMAE",
    "GroupedPatchEmbed",
    "MAEOutput",
    "MaskedAutoencoder",
    "create_encoder",
    "embed_patch_tokens",
    "extract_patches",
    "mae_decoder_defaults",
    "masked_mse",
    "patchify",
    "random_masking",
    "sincos_pos_embed_2d",
    "teacher_momentum",
    "unpatchify",
]
