"""Models: the timm ViT encoder, MAE and RC-MAE wrappers, weight loading."""

from rsmae.models.vit import ENCODER_PRESETS, create_encoder, sincos_pos_embed_2d

__all__ = ["ENCODER_PRESETS", "create_encoder", "sincos_pos_embed_2d"]
