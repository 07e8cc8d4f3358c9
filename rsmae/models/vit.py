"""The encoder: a plain timm ``VisionTransformer`` for any band count, fixed sin-cos positions.

The 2D sin-cos position embedding is fixed (as in MAE), so other code (timm, torchgeo, Lightning)
can take the encoder as is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rsmae.models.patch_embed import GroupedPatchEmbed

__all__ = [
    "ENCODER_PRESETS",
    "create_encoder",
    "fused_attention_pays",
    "set_fused_attention",
    "sincos_pos_embed_2d",
]

# Sizes of the encoder presets (timm names without the patch/img suffix).
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "vit_test": {"embed_dim": 64, "depth": 2, "num_heads": 2},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def sincos_pos_embed_2d(
    grid_h: int, grid_w: int, dim: int, *, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding in the official MAE layout.

    The first half of the width encodes the column (x), the second half the row (y), exactly as
    ``get_2d_sincos_pos_embed`` of facebookresearch/mae, so official weights keep their meaning
    when the table is rebuilt (e.g. GSD-scaled).

    Args:
        grid_h: Patches per column.
        grid_w: Patches per row.
        dim: Embedding width (divisible by 4).
        scale: Multiplies the patch coordinates; a tensor of shape ``(B,)`` gives one embedding
            per sample (used for GSD-aware encodings: scale = gsd / reference gsd).

    Returns:
        ``(grid_h * grid_w, dim)``, or ``(B, grid_h * grid_w, dim)`` when ``scale`` is a tensor
        (on the device of ``scale``).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    f64: dict[str, Any] = {"dtype": torch.float64}
    if isinstance(scale, torch.Tensor):
        f64["device"] = scale.device
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, **f64) / (dim / 4.0))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, **f64),
        torch.arange(grid_w, **f64),
        indexing="ij",
    )
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)])  # (2, N): columns first, as MAE
    if isinstance(scale, torch.Tensor):
        coords = coords[None] * scale.to(torch.float64).reshape(-1, 1, 1)  # (B, 2, N)
    else:
        coords = coords * float(scale)
    out = coords[..., None] * omega  # (..., 2, N, dim/4)
    emb = torch.cat([out.sin(), out.cos()], dim=-1)  # (..., 2, N, dim/2)
    emb = torch.cat([emb[..., 0, :, :], emb[..., 1, :, :]], dim=-1)  # (..., N, dim)
    return emb.float()


def create_encoder(
    preset: str = "vit_small",
    *,
    in_chans: int,
    img_size: int = 128,
    patch_size: int = 16,
    band_groups: Sequence[Sequence[int]] | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """Create a timm ViT encoder with a fixed sin-cos position embedding.

    Args:
        preset: One of :data:`ENCODER_PRESETS`.
        in_chans: Number of input bands (any count).
        img_size: Input size in pixels.
        patch_size: Patch size in pixels.
        band_groups: Channel indices of spectral band groups; when given, the patch embedding is
            a :class:`~rsmae.models.patch_embed.GroupedPatchEmbed` (one kernel per group).
        **overrides: Any other ``VisionTransformer`` argument (``depth``, ``drop_path_rate``,
            ``embed_layer``...).

    Returns:
        A ``VisionTransformer`` with ``num_classes=0`` (features out), a class token, and a
        non-trainable ``pos_embed`` holding the sin-cos table (class token slot zero).
    """
    if preset not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder preset {preset!r}; known: {', '.join(ENCODER_PRESETS)}")
    kwargs: dict[str, Any] = {**ENCODER_PRESETS[preset], "num_classes": 0, **overrides}
    if band_groups is not None:
        if "embed_layer" in overrides:
            raise ValueError("pass either band_groups or embed_layer, not both")
        groups = [list(g) for g in band_groups]
        kwargs["embed_layer"] = functools.partial(GroupedPatchEmbed, groups=groups)
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, **kwargs)
    grid_h, grid_w = model.patch_embed.grid_size
    table = sincos_pos_embed_2d(grid_h, grid_w, model.embed_dim)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, model.num_prefix_tokens :] = table
    model.pos_embed.requires_grad_(False)
    return model


def set_fused_attention(module: nn.Module, enabled: bool) -> int:
    """Switch every timm attention layer in ``module`` between fused SDPA and the plain math path.

    timm's ``Attention`` runs ``F.scaled_dot_product_attention`` when ``fused_attn`` is set and
    ``softmax(q @ k^T) @ v`` otherwise; both give the same result. The math path is what
    double backward (Hessian-vector products) needs, and on CPUs it is faster for ViT sequence
    lengths under bf16 autocast (``benchmarks/bench_pretrain.py``).

    Args:
        module: Any module holding timm attention layers (an encoder, an MAE, an RC-MAE).
        enabled: ``True`` for fused SDPA, ``False`` for the math path.

    Returns:
        The number of attention layers switched.
    """
    count = 0
    for layer in module.modules():
        if hasattr(layer, "fused_attn"):
            layer.fused_attn = bool(enabled)
            count += 1
    return count


def fused_attention_pays(device: torch.device | str) -> bool:
    """Whether fused SDPA is the faster attention on ``device``: on CUDA yes, on CPU no.

    On CUDA the flash and memory-efficient kernels save time and the memory of the attention
    matrix. On the CPU the fused kernel is no faster in fp32 and much slower in bf16 at ViT
    sequence lengths (17-257 tokens): measured 73 vs 115 img/s for an MAE ViT-S/16 step on a
    2-core AVX512-BF16 CPU.
    """
    return torch.device(device).type == "cuda"
