"""rsmae: remote-sensing self-supervised pretraining (tiling, MAE / RC-MAE, transfer).

``import rsmae`` is light (no torch): tiling workers import only what they use. The backbone
helpers below are loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BackboneMeta": "rsmae.models.weights",
    "load_backbone": "rsmae.models.weights",
    "save_backbone": "rsmae.models.weights",
}

__all__ = ["BackboneMeta", "__version__", "load_backbone", "save_backbone"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rsmae' has no attribute {name!r}")
