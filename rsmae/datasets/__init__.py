"""Datasets with fixed splits, one class per file (bands and splits as class attributes)."""

from rsmae.datasets.eurosat import EuroSAT

__all__ = ["EuroSAT"]
