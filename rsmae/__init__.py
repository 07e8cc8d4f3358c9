"""rsmae: remote-sensing self-supervised pretraining (tiling, MAE / RC-MAE, transfer)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
