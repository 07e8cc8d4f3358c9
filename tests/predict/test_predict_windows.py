"""The streaming scan blends windows exactly as the change scoring's sliding windows do, for any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsmae.evaluation.sliding import sliding_window_logits
from rsmae.predict.windows import ScanSpec, scan


def _context_model(batch: np.ndarray) -> np.ndarray:
    """A window-dependent output: each pixel plus its window's mean (so blending matters)."""
    x = np.nan_to_num(batch[:, :, 0])  # (N, T, w, w): band 0 of each date, nodata as 0 (as Predictor fills)
    out = x.sum(axis=1) + x.mean(axis=(1, 2, 3))[:, None, None]
    return out[:, None].astype(np.float32)


@pytest.mark.parametrize(("height", "width", "batch"), [(70, 53, 1), (70, 53, 3), (96, 130, 7), (20, 25, 2)])
def test_scan_equals_sliding_window_logits(height: int, width: int, batch: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, height, width), dtype=np.float32)

    def reader(t: int):  # noqa: ANN202
        def read(row: int, col: int, h: int, w: int) -> np.ndarray:
            out = np.full((3, h, w), np.nan, np.float32)
            part = image[t, :, row:row + h, col:col + w]
            out[:, :part.shape[1], :part.shape[2]] = part
            return out
        return read

    rows: list[tuple[int, np.ndarray]] = []
    scan([reader(0), reader(1)], _context_model, ScanSpec(window=32, stride=24, batch=batch), height=height,
         width=width, channels=1, emit=lambda r, block: rows.append((r, block)))
    assert [r for r, _ in rows] == sorted(r for r, _ in rows)
    got = np.concatenate([b for _, b in rows], axis=1)[0]
    if min(height, width) < 32:  # smaller than a window: the scan fills NaN (nodata), sliding pads edges
        assert got.shape == (height, width) and np.isfinite(got).all()
        return
    expected = sliding_window_logits(lambda b: torch.from_numpy(_context_model(b.numpy()))[:, 0],
                                     torch.from_numpy(image), window=32, overlap=8).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
