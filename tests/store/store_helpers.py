"""Shared by the store tests: a store's statistics against a computation from its pixels."""

from __future__ import annotations

import numpy as np
import pytest

from rsmae.store import TileStore
from rsmae.tiling.units import valid_mask


def assert_exact_statistics(store: TileStore, nodata: float = 0) -> np.ndarray:
    """Each band's count, mean, std, p01 and p99 equal those of the stored valid pixels; returns the tiles."""
    tiles = store.read_tiles(store.index())
    for c, band in enumerate(store.band_names):
        values = np.concatenate([t[c][valid_mask(t, nodata)] for t in tiles]).astype(np.float64)
        got = store.attrs["stats"][band]
        assert got["count"] == values.size
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert got["std"] == pytest.approx(values.std(), rel=1e-9)
        assert got["p01"] == pytest.approx(np.percentile(values, 1), rel=1e-12)
        assert got["p99"] == pytest.approx(np.percentile(values, 99), rel=1e-12)
    return tiles
