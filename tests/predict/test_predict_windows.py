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


@pytest.mark.parametrize(("width", "chunk", "scale"), [(203, 40, 1), (203, 96, 8), (130, 1, 8), (31, 50, 1)])
def test_a_strip_read_in_pieces_gives_the_same_output(width: int, chunk: int, scale: int) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((2, 3, 75, width), dtype=np.float32)
    image[:, 1, 10:30, 40:90] = np.nan  # nodata in one band of both dates: NaN cells, skipped windows
    image[1, :, 50:, :20] = np.nan
    widths: list[int] = []

    def reader(t: int):  # noqa: ANN202
        def read(row: int, col: int, h: int, w: int) -> np.ndarray:
            widths.append(w)
            out = np.full((3, h, w), np.nan, np.float32)
            part = image[t, :, row:row + h, col:col + w]
            out[:, :part.shape[1], :part.shape[2]] = part
            return out
        return read

    def model(batch: np.ndarray) -> np.ndarray:
        out = _context_model(batch)
        return out[..., ::scale, ::scale] if scale > 1 else out

    def run(piece: int) -> np.ndarray:
        rows: list[tuple[int, np.ndarray]] = []
        scan([reader(0), reader(1)], model, ScanSpec(window=32, stride=24, scale=scale, batch=5, chunk=piece),
             height=75, width=width, channels=1, emit=lambda r, block: rows.append((r, block)))
        return np.concatenate([b for _, b in rows], axis=1)

    whole = run(10**6)
    assert max(widths) >= min(width, 10**6) // scale * scale  # one read spans the strip
    widths.clear()
    got = run(chunk)
    assert max(widths) <= max(chunk, 32)  # pieces of at most ~chunk px (one window at least)
    assert np.isnan(got).any() and np.isfinite(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(whole))
    np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)
