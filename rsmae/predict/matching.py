"""Relative radiometric matching of date 2 to date 1, as the change evaluation trains and scores.

``rsmae evaluate --task ...`` rescales date 2 per band to date 1's scene mean and standard deviation
before training and scoring (:meth:`rsmae.datasets.PairScene.match_dates`) and records it as
``match_dates`` in the saved model. A model trained so calls a global brightness change (season, sun,
atmosphere) change everywhere when fed raw date-2 pixels, so ``predict change`` does the same: the
statistics of both dates on date 1's grid are summed in a first pass block by block (constant memory,
nodata left out), then date 2's reads are rescaled, rounded and clipped to its dtype as the evaluation
does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rsmae.datasets.bitemporal import rescale_bands

__all__ = ["BandStatistics", "matched_reader"]

Read = Callable[[int, int, int, int], np.ndarray]


class BandStatistics:
    """Per-band mean and standard deviation of a scene read block by block (NaN cells left out)."""

    def __init__(self, read: Read, height: int, width: int, *, rows: int = 256) -> None:
        n = total = squares = None
        for r in range(0, height, rows):
            block = read(r, 0, min(rows, height - r), width).astype(np.float64)
            x = block.reshape(block.shape[0], -1)
            x = x[:, ~np.isnan(x).any(axis=0)]
            if n is None:
                n, total, squares = 0, np.zeros(x.shape[0]), np.zeros(x.shape[0])
            n, total, squares = n + x.shape[1], total + x.sum(axis=1), squares + (x * x).sum(axis=1)
        n = max(n or 0, 1)
        self.mean = total / n
        self.std = np.sqrt(np.maximum(squares / n - self.mean ** 2, 0.0))


def matched_reader(read: Read, own: BandStatistics, reference: BandStatistics, dtype: str) -> Read:
    """``read`` rescaled per band from ``own`` statistics to ``reference``'s (NaN kept).

    Integer pixels are rounded and clipped to ``dtype``'s range: the evaluation's rule
    (:func:`~rsmae.datasets.bitemporal.rescale_bands`).
    """
    own_stats = (own.mean[:, None, None], own.std[:, None, None])
    ref_stats = (reference.mean[:, None, None], reference.std[:, None, None])

    def matched(row: int, col: int, height: int, width: int) -> np.ndarray:
        return rescale_bands(read(row, col, height, width), own_stats, ref_stats, dtype).astype(np.float32)

    return matched
