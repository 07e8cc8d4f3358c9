"""Frozen features computed once and cached on disk, keyed by the backbone file and the data.

The key hashes the backbone file's bytes (so a changed file never reuses old features), the exact
input tensor, the pooling and the input size. A cache entry is written atomically (temp file, then
rename), so an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from rsmae.models.registry import sha256_file
from rsmae.tasks.probe import extract_features

__all__ = ["cached_features", "file_digest", "tensor_digest"]

_logger = logging.getLogger(__name__)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): :func:`rsmae.models.registry.sha256_file`."""
    return sha256_file(path)


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (hex)."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cached_features(
    encoder: nn.Module,
    images: Tensor,
    *,
    backbone_digest: str,
    cache_dir: str | Path | None,
    pool: str = "cls",
    batch_size: int = 128,
) -> Tensor:
    """:func:`~rsmae.tasks.probe.extract_features` of ``images``, read from the cache when present.

    Args:
        encoder: The frozen encoder (loaded from the file whose digest is ``backbone_digest``).
        images: Normalised inputs ``(N, C, H, W)``.
        backbone_digest: :func:`file_digest` of the backbone file (part of the key).
        cache_dir: Folder of cache entries; ``None`` disables caching.
        pool: ``"cls"`` or ``"mean"``.
        batch_size: Extraction batch size.

    Returns:
        ``(N, D)`` float32 features.
    """
    if cache_dir is None:
        return extract_features(encoder, images, batch_size=batch_size, pool=pool)
    key = hashlib.sha256(f"{backbone_digest}:{tensor_digest(images)}:{pool}".encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt entry is recomputed, never trusted
            _logger.warning("%s: unreadable cache entry (%s); recomputing", path, err)
    feats = extract_features(encoder, images, batch_size=batch_size, pool=pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(feats, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return feats
