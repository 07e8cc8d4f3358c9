"""Sliding-window inference over a whole scene: overlapping windows, batched, blended logits.

A scene larger than the model's input is cut into ``window`` x ``window`` windows with ``overlap``
pixels shared by neighbours (the last window of a row/column is moved back to end at the border),
run in batches, and the logits are averaged with a weight window that falls towards the window's
border (cosine by default), so that no seam shows where windows meet and each pixel is predicted
mostly from windows where it has context. A scene smaller than a window is padded by edge
replication. An input exactly one window in size gives the model's single forward unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blend_window", "sliding_window_logits", "window_starts"]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows covering ``0..size`` (the last one ends at ``size``)."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return [*starts, size - window]


def blend_window(window: int, kind: str = "cosine", floor: float = 1e-3) -> Tensor:
    """``(window, window)`` blending weights: ``"cosine"`` (Hann), ``"triangular"`` or ``"flat"``.

    Weights never reach zero (``floor``), so border pixels covered by one window keep its logit.
    """
    pos = (torch.arange(window, dtype=torch.float64) + 0.5) / window  # pixel centres in (0, 1)
    if kind == "cosine":
        w = torch.sin(math.pi * pos) ** 2
    elif kind == "triangular":
        w = 1 - (2 * pos - 1).abs()
    elif kind == "flat":
        w = torch.ones(window, dtype=torch.float64)
    else:
        raise ValueError(f"blend window {kind!r}; choose 'cosine', 'triangular' or 'flat'")
    w = w.clamp_min(floor)
    return (w[:, None] * w[None, :]).float()


@torch.no_grad()
def sliding_window_logits(
    predict: Callable[[Tensor], Tensor],
    pair: Tensor,
    *,
    window: int,
    overlap: int,
    batch_size: int = 16,
    blend: str = "cosine",
) -> Tensor:
    """Change logits of a whole scene from overlapping windows.

    Args:
        predict: Maps a batch of windows ``(N, 2, C, window, window)`` to logits
            ``(N, window, window)`` (a model in eval mode, normalisation included).
        pair: The scene ``(2, C, H, W)``.
        window: Window side (the model's input size).
        overlap: Pixels shared by neighbouring windows (``0 <= overlap < window``).
        batch_size: Windows per call of ``predict``.
        blend: Weight window (:func:`blend_window`).

    Returns:
        Blended logits ``(H, W)``, float32, on ``pair``'s device.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap} must be in 0..window-1 (window={window})")
    height, width = pair.shape[-2:]
    ph, pw = max(window - height, 0), max(window - width, 0)
    if ph or pw:
        pair = F.pad(pair, (0, pw, 0, ph), mode="replicate")
    full_h, full_w = pair.shape[-2:]
    stride = window - overlap
    rows, cols = window_starts(full_h, window, stride), window_starts(full_w, window, stride)
    boxes = [(r, c) for r in rows for c in cols]
    weight = blend_window(window, blend).to(pair.device)
    total = torch.zeros(full_h, full_w, device=pair.device)
    norm = torch.zeros(full_h, full_w, device=pair.device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        batch = torch.stack([pair[..., r:r + window, c:c + window] for r, c in chunk])
        logits = predict(batch).float()
        for (r, c), logit in zip(chunk, logits, strict=True):
            total[r:r + window, c:c + window] += logit * weight
            norm[r:r + window, c:c + window] += weight
    return (total / norm)[:height, :width]
