"""The pieces every model module shares and that build on nothing else: preset sizes, the sin-cos table.

Kept apart from :mod:`rsmae.models.vit` (the registered timm encoders), so that the weight
adaptation below it (:mod:`rsmae.models.keys`, :mod:`rsmae.models.adapt`) imports no encoder.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ENCODER_PRESETS", "sincos_pos_embed_2d"]

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
