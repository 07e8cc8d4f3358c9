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

    Integer pixels are rounded and clipped to ``dtype``'s range, as the evaluation's matching does.
    """
    scale = (reference.std / np.maximum(own.std, 1e-9))[:, None, None]
    shift = (reference.mean[:, None, None], own.mean[:, None, None])
    limits = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None

    def matched(row: int, col: int, height: int, width: int) -> np.ndarray:
        x = (read(row, col, height, width) - shift[1]) * scale + shift[0]
        if limits is not None:
            x = np.clip(np.rint(x), limits.min, limits.max)
        return x.astype(np.float32)

    return matched
