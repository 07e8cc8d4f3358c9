"""Frozen features computed once and cached on disk, keyed by everything that decides them.

The key (:func:`feature_key`) hashes the backbone file's bytes (so a changed file never reuses old
features), the exact input tensor, the pooling, the precision the features are computed in (the
encoder's dtype and device type), the rsmae version and :data:`CACHE_VERSION`, bumped whenever the
extraction changes. An entry is written with :func:`rsmae.files.atomic_path`, so an interrupted run
never leaves a half-written entry behind, and an unreadable one is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

import rsmae
from rsmae.files import atomic_path
from rsmae.models.registry import sha256_file
from rsmae.tasks.probe import extract_features

__all__ = ["CACHE_VERSION", "cached_features", "feature_key", "file_digest", "tensor_digest"]

# Bump when the computation of cached features changes (pooling, extraction, resizing): every entry
# made before is then recomputed.
CACHE_VERSION = 2

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


def feature_key(encoder: nn.Module, images: Tensor, *, backbone_digest: str, pool: str) -> str:
    """The cache key of ``encoder``'s ``pool`` features of ``images`` (hex, 32 characters).

    Made of the backbone file's digest, the images' digest, the pooling, the resolved precision (the
    encoder's parameter dtype and device type: :func:`~rsmae.tasks.probe.extract_features` runs
    without autocast), ``rsmae.__version__`` and :data:`CACHE_VERSION`.
    """
    param = next(encoder.parameters(), None)
    precision = "float32 cpu" if param is None else f"{param.dtype} {param.device.type}"
    parts = {"backbone": backbone_digest, "images": tensor_digest(images), "pool": pool,
             "precision": precision, "rsmae": rsmae.__version__, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


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
    key = feature_key(encoder, images, backbone_digest=backbone_digest, pool=pool)
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt entry is recomputed, never trusted
            _logger.warning("%s: unreadable cache entry (%s); recomputing", path, err)
    feats = extract_features(encoder, images, batch_size=batch_size, pool=pool)
    with atomic_path(path) as tmp:
        torch.save(feats, tmp)
    return feats
